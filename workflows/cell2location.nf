/*
 * The cell2location workflow: sections + reference (or ready signatures) -> cell-type abundance maps.
 * Values come in through `take:` only; nothing here reads params.
 */

include { READ_VISIUM      } from '../modules/local/read_visium/main'
include { FILTER_REFERENCE } from '../modules/local/filter_reference/main'
include { TRAIN_REFERENCE  } from '../modules/local/train_reference/main'
include { MAP_CELLS        } from '../modules/local/map_cells/main'
include { MERGE_SHARDS     } from '../modules/local/merge_shards/main'
include { PLOT_SPATIAL     } from '../modules/local/plot_spatial/main'
include { REGIONS          } from '../modules/local/regions/main'
include { COLOCATION       } from '../modules/local/colocation/main'

workflow CELL2LOCATION {
    take:
    ch_sections     // channel: [ val(meta), path(spaceranger_dir or h5ad) ] one per section;
                    //          meta: id, input_type, n_cells_per_location, detection_alpha, metadata
    ch_reference    // channel: [ val(meta), path(reference.h5ad) ], or empty when signatures are given;
                    //          meta: id, labels_key, batch_key, categorical_covariate_keys, gene_id_column
    ch_signatures   // channel: path(signatures.csv), or empty when the reference is trained here
    mapping_mode    // value:   'joint' (one model for all sections) or 'per_sample'
    shard_budget    // value:   [max_locations: Integer or null, memory_gb: Number, coefficients: Map or null]:
                    //          a model of more locations than max_locations (or, when null, than the memory
                    //          model allows within memory_gb) is fitted as shards (MAP_CELLS per shard, MERGE_SHARDS)
    detection_alphas // value:  list of detection_alpha values; with more than one, every model is fitted once per
                    //          value (model id <id>_alpha<value>, meta.variant alpha<value>), overriding the sections' own
    run_regions     // value:   true: tissue regions over all mapped sections (REGIONS)
    run_colocation  // value:   true: co-location factors over all mapped sections (COLOCATION)

    main:
    ch_versions = Channel.empty()

    READ_VISIUM(ch_sections)
    ch_versions = ch_versions.mix(READ_VISIUM.out.versions.first())  // versions once per process type

    FILTER_REFERENCE(ch_reference)
    ch_versions = ch_versions.mix(FILTER_REFERENCE.out.versions)     // one task (a value channel)

    TRAIN_REFERENCE(FILTER_REFERENCE.out.h5ad)
    ch_versions = ch_versions.mix(TRAIN_REFERENCE.out.versions)

    // exactly one of the two is non-empty (checked in main.nf)
    ch_sig = ch_signatures.mix(TRAIN_REFERENCE.out.signatures.map { _meta, csv -> csv }).collect()

    // one model per group of sections; its meta lists the sections' own metas, in the order of the files.
    // Each section's number of spots comes from its QC table, to size the models.
    ch_counted = READ_VISIUM.out.h5ad
        .join(READ_VISIUM.out.qc)
        .map { meta, h5ad, qc -> [meta, h5ad, qcSpots(qc, meta.id)] }
    if (mapping_mode == 'per_sample') {
        ch_models = ch_counted
            .map { meta, h5ad, n -> [ modelMeta(meta.id, [meta]), [h5ad], n ] }
    } else {
        ch_models = ch_counted
            .toSortedList { a, b -> a[0].id <=> b[0].id }
            .filter { items -> items }  // no section read (a failed READ_VISIUM): no model, no second error
            .map { items -> [ modelMeta('joint', items.collect { item -> item[0] }), items.collect { item -> item[1] }, items.sum { item -> item[2] } ] }
    }
    // --detection_alpha 20,200: each model once per value (the tutorial advises trying both)
    if (detection_alphas && detection_alphas.size() > 1) {
        ch_models = ch_models.flatMap { meta, files, n -> detection_alphas.collect { alpha ->
            def variant = "alpha${alphaTag(alpha)}"
            [ meta + [id: "${meta.id}_${variant}", variant: variant,
                      sections: meta.sections.collect { section -> section + [detection_alpha: alpha, variant: variant] }], files, n ]
        } }
    }
    // a model larger than the budget becomes `count` shards (one task each), stratified by section in map-cells
    ch_map_in = ch_models
        .combine(ch_sig.map { csvs -> signatureShape(csvs[0]) })
        .flatMap { meta, files, n, shape -> shardModel(meta, files, n, shape, shard_budget) }
    MAP_CELLS(ch_map_in, ch_sig)
    ch_versions = ch_versions.mix(MAP_CELLS.out.versions.first())

    // the shards of each model, once all are done, with the model's sections -> per-section outputs
    ch_shard_files = MAP_CELLS.out.csv
        .join(MAP_CELLS.out.summary)
        .join(MAP_CELLS.out.history)
        .filter { meta, _csvs, _json, _history -> meta.shard }
        .map { meta, csvs, json, history -> [ groupKey(meta.id, meta.shard.count), [csvs, json, history].flatten() ] }
        .groupTuple()
        .map { key, files -> [ key.getGroupTarget(), files.flatten() ] }
    ch_merge_in = ch_map_in
        .filter { meta, _files -> meta.shard?.index == 1 }
        .map { meta, files -> [ meta.id, meta.findAll { k, _v -> k != 'shard' } + [n_shards: meta.shard.count], files ] }
        .join(ch_shard_files)
        .map { _id, meta, sections, shardFiles -> [ meta, sections, shardFiles ] }
    MERGE_SHARDS(ch_merge_in)
    ch_versions = ch_versions.mix(MERGE_SHARDS.out.versions.first())

    // one mapped h5ad per section, with the section's own meta: the file is the one MAP_CELLS (or MERGE_SHARDS)
    // named after it
    ch_mapped = MAP_CELLS.out.h5ad
        .mix(MERGE_SHARDS.out.h5ad)
        .flatMap { meta, files ->
            def byName = (files instanceof List ? files : [files]).collectEntries { f -> [f.name, f] }
            meta.sections.collect { section ->
                def h5ad = byName["${section.id}.cell2location.h5ad"]
                if (h5ad == null) { error("mapping model '${meta.id}' wrote no ${section.id}.cell2location.h5ad (a pipeline bug)") }
                [section, h5ad]
            }
        }
    PLOT_SPATIAL(ch_mapped)
    ch_versions = ch_versions.mix(PLOT_SPATIAL.out.versions.first())

    // optional downstream analyses over all mapped sections together (the tutorial's adata_vis): tissue regions
    // (--regions) and co-location factors (--colocation_factors); a step that is off gets no input, so no task
    // (once per --detection_alpha value when there are several)
    ch_all_mapped = ch_mapped
        .map { meta, h5ad -> [ meta.variant ?: '', [meta.id, h5ad] ] }
        .groupTuple()
        .map { variant, pairs -> def sorted = pairs.sort { pair -> pair[0] }; [ variant, sorted.collect { pair -> pair[0] }, sorted.collect { pair -> pair[1] } ] }
    REGIONS(run_regions ? ch_all_mapped : Channel.empty())
    ch_versions = ch_versions.mix(REGIONS.out.versions)
    COLOCATION(run_colocation ? ch_all_mapped : Channel.empty())
    ch_versions = ch_versions.mix(COLOCATION.out.versions)

    // every step's warnings (c2l.warnings.txt, when it has any) as [ 'STEP id', file ], for main.nf to show
    ch_warnings = Channel.empty()
    [READ_VISIUM: READ_VISIUM.out.warnings, FILTER_REFERENCE: FILTER_REFERENCE.out.warnings,
     TRAIN_REFERENCE: TRAIN_REFERENCE.out.warnings, MAP_CELLS: MAP_CELLS.out.warnings,
     MERGE_SHARDS: MERGE_SHARDS.out.warnings, PLOT_SPATIAL: PLOT_SPATIAL.out.warnings,
     REGIONS: REGIONS.out.warnings.map { txt -> [[id: 'all sections'], txt] },
     COLOCATION: COLOCATION.out.warnings.map { txt -> [[id: 'all sections'], txt] }].each { step, ch ->
        ch_warnings = ch_warnings.mix(ch.map { meta, txt -> ["${step} ${meta.shard ? "${meta.id} ${meta.shard.tag}" : meta.id}", txt] })
    }

    emit:
    warnings     = ch_warnings
    sections     = READ_VISIUM.out.h5ad
    qc           = READ_VISIUM.out.qc
    signatures   = ch_sig
    mapped       = ch_mapped
    abundance    = MAP_CELLS.out.csv.filter { meta, _csvs -> !meta.shard }.mix(MERGE_SHARDS.out.csv)
    models       = MAP_CELLS.out.model
    figures      = PLOT_SPATIAL.out.abundance.mix(PLOT_SPATIAL.out.overlay, PLOT_SPATIAL.out.proportions)
    regions      = REGIONS.out.csv
    region_plots = REGIONS.out.maps.mix(REGIONS.out.composition_plot)
    colocation   = COLOCATION.out.factors
    versions     = ch_versions
    // what the run report reads (files only): section QC, reference QC and training, each model's summary and
    // -ELBO (a sharded model's merged ones)
    report_sections  = READ_VISIUM.out.qc.map { _meta, f -> f }
    report_reference = FILTER_REFERENCE.out.genes
        .mix(TRAIN_REFERENCE.out.summary, TRAIN_REFERENCE.out.history)
        .map { _meta, f -> f }
    report_models    = MAP_CELLS.out.summary.mix(MAP_CELLS.out.history)
        .filter { meta, _f -> !meta.shard }
        .mix(MERGE_SHARDS.out.summary, MERGE_SHARDS.out.history)
        .map { _meta, f -> f }
}

/*
 * The meta of one Cell2location model over `sections` (their metas): the sections in one joint model share
 * n_cells_per_location (checked at ingestion); detection_alpha stays per section.
 */
def modelMeta(String id, List sections) {
    return [id: id, sections: sections, n_cells_per_location: sections[0].n_cells_per_location]
}

/*
 * A detection_alpha value as written in ids: 20.0 -> '20', 12.5 -> '12.5'.
 */
def alphaTag(alpha) {
    return (alpha as BigDecimal).stripTrailingZeros().toPlainString()
}

/*
 * The number of spots of a section: the n_spots column of its READ_VISIUM QC table.
 */
def qcSpots(qc, String sample) {
    def lines = qc.readLines()
    def header = lines[0].split(',') as List
    def col = header.indexOf('n_spots')
    if (col < 0 || lines.size() < 2) { error("READ_VISIUM '${sample}' wrote a QC table without n_spots (a pipeline bug)") }
    return lines[1].split(',')[col] as long
}

/*
 * [genes, types] of a signatures CSV (genes x cell types, header row): an upper bound of a model's shared genes,
 * and its cell types, for the memory estimate.
 */
def signatureShape(csv) {
    def genes = 0 as long
    def header = null
    csv.eachLine { line -> if (header == null) { header = line } else if (line.trim()) { genes += 1 } }
    def types = header ? header.split(',(?=(?:[^"]*"[^"]*")*[^"]*$)').size() - 1 : 0   // (an empty -stub file)
    return [genes: genes, types: types]
}

/*
 * The most locations one model may hold: --max_locations_per_model, else the largest model whose estimated peak
 * memory (assets/memory_model.json; the same rule as bin/c2lnf/memory.py: max_locations) fits memory_gb;
 * null (never shard) when neither is known.
 */
def maxLocations(Map shape, Map budget) {
    if (budget.max_locations) { return budget.max_locations as long }
    def c = budget.coefficients
    if (!c) { return null }
    def perLocation = c.gb_per_location_gene * shape.genes + c.gb_per_location_type * shape.types
    return perLocation > 0 ? Math.max(1 as long, ((budget.memory_gb - c.base_gb) / perLocation) as long) : null
}

/*
 * [meta, files] of one model, or of each of its shards: meta.shard = [index, count, tag] (tag as
 * bin/c2lnf/map_cells.py: shard_tag); meta.n_locations and meta.max_locations record the decision.
 */
def shardModel(Map meta, List files, long n, Map shape, Map budget) {
    def most = maxLocations(shape, budget)
    def m = meta + [n_locations: n, max_locations: most]
    def count = most ? Math.ceil(n / (most as double)) as int : 1
    if (count <= 1) { return [[m, files]] }
    def option = budget.max_locations ? '--max_locations_per_model' : '--gpu_memory_gb'
    def why = budget.max_locations ? option : "memory model within ${option} ${budget.memory_gb}"
    log.info "model '${meta.id}': ${n} locations, at most ${most} per model (${why}): ${count} shards stratified by section"
    // the smallest shard measured to agree with an unsharded model: 600 locations (median per-type q05 r 0.990; 300: 0.975)
    def minAgreeing = 600
    def perShard = Math.floor(n / (count as double)) as long
    if (perShard < minAgreeing) {
        log.warn "model '${meta.id}': shards of ~${perShard} locations (${why}); each shard fits the genes' detection " +
            "efficiency from its own spots, and shards below ${minAgreeing} locations were measured to " +
            "disagree with an unsharded model (docs/benchmarks.md, 'Memory and sharding'): raise ${option} if memory allows"
    }
    def width = "${count}".size()
    return (1..count).collect { i ->
        [m + [shard: [index: i, count: count, tag: "shard-${"${i}".padLeft(width, '0')}-of-${count}"]], files]
    }
}
