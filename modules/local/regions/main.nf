process REGIONS {
    tag "${variant ?: 'regions'}"
    label 'process_low'

    input:
    tuple val(variant), val(ids), path(sections, stageAs: 'sections/*')  // variant: '' or alpha<value>; every mapped
                                                                        // section (<id>.cell2location.h5ad), ids in the files' order

    // written under <variant>/ when there is one, as published (conf/modules.config)
    output:
    path "${sub}regions.csv"             , emit: csv
    path "${sub}regions_composition.csv" , emit: composition
    path "${sub}regions_composition.png" , emit: composition_plot
    path "${sub}*.regions.png"           , emit: maps
    path "c2l.warnings.txt"          , emit: warnings, optional: true  // shown by main.nf
    path "versions.yml"               , emit: versions

    script:
    def args  = task.ext.args ?: ''
    sub       = variant ? "${variant}/" : ''
    def files = sections instanceof List ? sections : [sections]
    def pairs = [ids, files].transpose().collect { id, f -> "--section '${id}=${f}'" }.join(' \\\n        ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt regions \\
        ${pairs} \\
        ${args} \\
        --outdir '${variant ?: '.'}'

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    sub = variant ? "${variant}/" : ''
    """
    mkdir -p ./${sub}
    echo 'sample,barcode,region' > ${sub}regions.csv
    echo 'region,n_spots' > ${sub}regions_composition.csv
    touch ${sub}regions_composition.png ${ids.collect { id -> "${sub}${id}.regions.png" }.join(' ')}
    c2l versions --process '${task.process}' > versions.yml
    """
}
