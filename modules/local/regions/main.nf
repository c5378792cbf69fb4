process REGIONS {
    tag "${variant ?: 'regions'}"
    label 'process_low'

    input:
    tuple val(variant), val(ids), path(sections, stageAs: 'sections/*')  // variant: '' or alpha<value>; every mapped
                                                                        // section (<id>.cell2location.h5ad), ids in the files' order

    output:
    path "regions.csv"                , emit: csv
    path "regions_composition.csv"    , emit: composition
    path "regions_composition.png"    , emit: composition_plot
    path "*.regions.png"              , emit: maps
    path "c2l.warnings.txt"          , emit: warnings, optional: true  // shown by main.nf
    path "versions.yml"               , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''
    def files = sections instanceof List ? sections : [sections]
    def pairs = [ids, files].transpose().collect { id, f -> "--section '${id}=${f}'" }.join(' \\\n        ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt regions \\
        ${pairs} \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    echo 'sample,barcode,region' > regions.csv
    echo 'region,n_spots' > regions_composition.csv
    touch regions_composition.png ${ids.collect { "${it}.regions.png" }.join(' ')}
    c2l versions --process '${task.process}' > versions.yml
    """
}
