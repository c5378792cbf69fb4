/*
 * The cell2location workflow: sections + reference (or ready signatures) -> cell-type abundance maps.
 * Values come in through `take:` only; nothing here reads params.
 */

include { READ_VISIUM      } from '../modules/local/read_visium/main'
include { FILTER_REFERENCE } from '../modules/local/filter_reference/main'
include { TRAIN_REFERENCE  } from '../modules/local/train_reference/main'
include { MAP_CELLS        } from '../modules/local/map_cells/main'
include { PLOT_SPATIAL     } from '../modules/local/plot_spatial/main'

workflow CELL2LOCATION {
    take:
    ch_sections     // channel: [ val(meta), path(spaceranger_dir or h5ad) ] one per section;
                    //          meta: id, input_type, n_cells_per_location, detection_alpha, metadata
    ch_reference    // channel: [ val(meta), path(reference.h5ad) ], or empty when signatures are given;
                    //          meta: id, labels_key, batch_key, categorical_covariate_keys, gene_id_column
    ch_signatures   // channel: path(signatures.csv), or empty when the reference is trained here
    mapping_mode    // value:   'joint' (one model for all sections) or 'per_sample'

    main:
    ch_versions = Channel.empty()

    READ_VISIUM(ch_sections)
    ch_versions = ch_versions.mix(READ_VISIUM.out.versions.first())  // versions once per process type

    FILTER_REFERENCE(ch_reference)
    ch_versions = ch_versions.mix(FILTER_REFERENCE.out.versions)     // one task (a value channel)

    TRAIN_REFERENCE(FILTER_REFERENCE.out.h5ad)
    ch_versions = ch_versions.mix(TRAIN_REFERENCE.out.versions)

    // exactly one of the two is non-empty (checked in main.nf)
    ch_sig = ch_signatures.mix(TRAIN_REFERENCE.out.signatures.map { meta, csv -> csv }).collect()

    // one model per group of sections; its meta lists the sections' own metas, in the order of the files
    if (mapping_mode == 'per_sample') {
        ch_map_in = READ_VISIUM.out.h5ad
            .map { meta, h5ad -> [ modelMeta(meta.id, [meta]), [h5ad] ] }
    } else {
        ch_map_in = READ_VISIUM.out.h5ad
            .toSortedList { a, b -> a[0].id <=> b[0].id }
            .map { items -> [ modelMeta('joint', items.collect { it[0] }), items.collect { it[1] } ] }
    }
    MAP_CELLS(ch_map_in, ch_sig)
    ch_versions = ch_versions.mix(mapping_mode == 'per_sample' ? MAP_CELLS.out.versions.first() : MAP_CELLS.out.versions)

    // one mapped h5ad per section, with the section's own meta: the file is the one MAP_CELLS named after it
    ch_mapped = MAP_CELLS.out.h5ad
        .flatMap { meta, files ->
            def byName = (files instanceof List ? files : [files]).collectEntries { f -> [f.name, f] }
            meta.sections.collect { section ->
                def h5ad = byName["${section.id}.cell2location.h5ad"]
                if (h5ad == null) { error("MAP_CELLS '${meta.id}' wrote no ${section.id}.cell2location.h5ad (a pipeline bug)") }
                [section, h5ad]
            }
        }
    PLOT_SPATIAL(ch_mapped)
    ch_versions = ch_versions.mix(PLOT_SPATIAL.out.versions.first())

    emit:
    sections     = READ_VISIUM.out.h5ad
    qc           = READ_VISIUM.out.qc
    signatures   = ch_sig
    mapped       = ch_mapped
    abundance    = MAP_CELLS.out.csv
    models       = MAP_CELLS.out.model
    figures      = PLOT_SPATIAL.out.abundance.mix(PLOT_SPATIAL.out.overlay, PLOT_SPATIAL.out.proportions)
    versions     = ch_versions
}

/*
 * The meta of one Cell2location model over `sections` (their metas): the sections in one joint model share
 * n_cells_per_location (checked at ingestion); detection_alpha stays per section.
 */
def modelMeta(String id, List sections) {
    return [id: id, sections: sections, n_cells_per_location: sections[0].n_cells_per_location]
}
