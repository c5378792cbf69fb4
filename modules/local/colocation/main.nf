process COLOCATION {
    tag "${variant ?: 'colocation'}"
    label 'process_medium'

    input:
    tuple val(variant), val(ids), path(sections, stageAs: 'sections/*')  // variant: '' or alpha<value>; every mapped
                                                                        // section (<id>.cell2location.h5ad), ids in the files' order

    // written under <variant>/ when there is one, as published (conf/modules.config)
    output:
    path "${sub}n_fact*"   , emit: factors   // one folder per number of factors
    path "c2l.warnings.txt"          , emit: warnings, optional: true  // shown by main.nf
    path "versions.yml"    , emit: versions

    script:
    def args  = task.ext.args ?: ''
    sub       = variant ? "${variant}/" : ''
    def files = sections instanceof List ? sections : [sections]
    def pairs = [ids, files].transpose().collect { id, f -> "--section '${id}=${f}'" }.join(' \\\n        ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt colocation \\
        ${pairs} \\
        ${args} \\
        --outdir '${variant ?: '.'}'

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    sub = variant ? "${variant}/" : ''
    def factors = (task.ext.args ?: '').find(/--n-factors (\S+)/) { _m, v -> v } ?: '5'
    """
    for k in ${factors.replace(',', ' ')}; do
        mkdir -p ./${sub}n_fact\$k
        touch ./${sub}n_fact\$k/cell_type_fractions.csv ./${sub}n_fact\$k/location_factors.csv ./${sub}n_fact\$k/factor_markers.csv ./${sub}n_fact\$k/dotplot.png
    done
    c2l versions --process '${task.process}' > versions.yml
    """
}
