process FILTER_REFERENCE {
    tag "${reference.baseName}"
    label 'process_medium'

    conda "${moduleDir}/../../../containers/environment.yml"
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] ?
        'docker://ghcr.io/cell2location-nf/cell2location-nf:0.1.0' :
        'ghcr.io/cell2location-nf/cell2location-nf:0.1.0' }"

    input:
    path reference, stageAs: 'input/*'
    val labels_key

    output:
    path "reference_filtered.h5ad", emit: h5ad
    path "reference_filter.png"   , emit: plot
    path "reference_genes.csv"    , emit: genes
    path "versions.yml"           , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} filter-reference \\
        --reference ${reference} \\
        --labels-key '${labels_key}' \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    touch reference_filtered.h5ad reference_filter.png
    echo 'gene,kept' > reference_genes.csv
    c2l versions --process '${task.process}' > versions.yml
    """
}
