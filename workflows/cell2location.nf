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
    ch_sections     // channel: [ val(meta), path(spaceranger_dir or h5ad) ] one per section
    ch_reference    // channel: path(reference.h5ad), or empty when signatures are given
    ch_signatures   // channel: path(signatures.csv), or empty when the reference is trained here
    labels_key      // value:   obs column of the reference with cell-type labels
    mapping_mode    // value:   'joint' (one model for all sections) or 'per_sample'

    main:
    ch_versions = Channel.empty()

    READ_VISIUM(ch_sections)
    ch_versions = ch_versions.mix(READ_VISIUM.out.versions)

    FILTER_REFERENCE(ch_reference, labels_key)
    ch_versions = ch_versions.mix(FILTER_REFERENCE.out.versions)

    TRAIN_REFERENCE(FILTER_REFERENCE.out.h5ad, labels_key)
    ch_versions = ch_versions.mix(TRAIN_REFERENCE.out.versions)

    // exactly one of the two is non-empty (checked in main.nf)
    ch_sig = ch_signatures.mix(TRAIN_REFERENCE.out.signatures).collect()

    if (mapping_mode == 'per_sample') {
        ch_map_in = READ_VISIUM.out.h5ad
            .map { meta, h5ad -> [ [id: meta.id, samples: [meta.id]], [h5ad] ] }
    } else {
        ch_map_in = READ_VISIUM.out.h5ad
            .toSortedList { a, b -> a[0].id <=> b[0].id }
            .map { items -> [ [id: 'joint', samples: items.collect { it[0].id }], items.collect { it[1] } ] }
    }
    MAP_CELLS(ch_map_in, ch_sig)
    ch_versions = ch_versions.mix(MAP_CELLS.out.versions)

    // one mapped h5ad per section, back with the section's own meta. A section without a mapped h5ad
    // (its MAP_CELLS task failed, or the run was stopped) is dropped here, so that the task's own error is
    // the one reported (failOnMismatch would add a "Join mismatch" error on top of it); a mapped h5ad
    // without a section is a pipeline bug and stops the run.
    ch_mapped = MAP_CELLS.out.h5ad
        .flatMap { meta, files -> (files instanceof List ? files : [files]).collect { f -> [f.name - '.cell2location.h5ad', f] } }
        .join(READ_VISIUM.out.h5ad.map { meta, h5ad -> [meta.id, meta] }, remainder: true)
        .filter { id, h5ad, meta -> h5ad != null }
        .map { id, h5ad, meta ->
            if (meta == null) { error("MAP_CELLS wrote ${h5ad.name}, which matches no section of the samplesheet") }
            [meta, h5ad]
        }
    PLOT_SPATIAL(ch_mapped)
    ch_versions = ch_versions.mix(PLOT_SPATIAL.out.versions)

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
