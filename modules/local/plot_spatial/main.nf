process PLOT_SPATIAL {
    tag "${meta.id}"
    label 'process_low'

    conda "${moduleDir}/../../../containers/environment.yml"
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] ?
        'docker://ghcr.io/cell2location-nf/cell2location-nf:0.1.0' :
        'ghcr.io/cell2location-nf/cell2location-nf:0.1.0' }"

    input:
    tuple val(meta), path(section)

    output:
    tuple val(meta), path("${meta.id}.q05_abundance.png"), emit: abundance
    tuple val(meta), path("${meta.id}.overlay.png")      , emit: overlay
    tuple val(meta), path("${meta.id}.proportions.png")  , emit: proportions
    path "versions.yml"                                  , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} plot-spatial \\
        ${section} \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    touch ${meta.id}.q05_abundance.png ${meta.id}.overlay.png ${meta.id}.proportions.png
    c2l versions --process '${task.process}' > versions.yml
    """
}
