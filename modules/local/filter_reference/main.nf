process FILTER_REFERENCE {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(reference, stageAs: 'input/*')

    output:
    tuple val(meta), path("${prefix}_filtered.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}_filter.png")   , emit: plot
    tuple val(meta), path("${prefix}_genes.csv")    , emit: genes
    tuple val(meta), path("c2l.warnings.txt")       , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                             , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    // the reference's own settings: its obs columns, gene id column and counts layer
    def own  = C2lArgs.join(C2lArgs.reference(meta) + [
        meta.gene_id_column ? "--gene-id-column ${C2lArgs.quote(meta.gene_id_column)}" : null,
        meta.layer ? "--layer ${C2lArgs.quote(meta.layer)}" : null,
    ])
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt filter-reference \\
        --reference ${reference} \\
        ${own} \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}_filtered.h5ad ${prefix}_filter.png
    echo 'gene,kept' > ${prefix}_genes.csv
    c2l versions --process '${task.process}' > versions.yml
    """
}
