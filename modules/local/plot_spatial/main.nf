process PLOT_SPATIAL {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(section)

    // written under <section>/ (<section>/<variant>/ with several detection_alpha values), as published
    output:
    tuple val(meta), path("${dir}/${prefix}.q05_abundance.png"), emit: abundance
    tuple val(meta), path("${dir}/${prefix}.overlay.png")      , emit: overlay
    tuple val(meta), path("${dir}/${prefix}.proportions.png")  , emit: proportions
    tuple val(meta), path("c2l.warnings.txt")           , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                                 , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: (meta.variant ? "${meta.id}.${meta.variant}" : "${meta.id}")
    dir      = meta.variant ? "${meta.id}/${meta.variant}" : "${meta.id}"
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt plot-spatial \\
        ${section} \\
        --sample '${meta.id}' \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir '${dir}'

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: (meta.variant ? "${meta.id}.${meta.variant}" : "${meta.id}")
    dir    = meta.variant ? "${meta.id}/${meta.variant}" : "${meta.id}"
    """
    mkdir -p ${dir}
    touch ${dir}/${prefix}.q05_abundance.png ${dir}/${prefix}.overlay.png ${dir}/${prefix}.proportions.png
    c2l versions --process '${task.process}' > versions.yml
    """
}
