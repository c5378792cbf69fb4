process PLOT_SPATIAL {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(section)

    output:
    tuple val(meta), path("${prefix}.q05_abundance.png"), emit: abundance
    tuple val(meta), path("${prefix}.overlay.png")      , emit: overlay
    tuple val(meta), path("${prefix}.proportions.png")  , emit: proportions
    tuple val(meta), path("c2l.warnings.txt")           , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt plot-spatial \\
        ${section} \\
        --sample '${meta.id}' \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.q05_abundance.png ${prefix}.overlay.png ${prefix}.proportions.png
    c2l versions --process '${task.process}' > versions.yml
    """
}
