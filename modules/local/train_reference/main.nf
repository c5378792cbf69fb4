process TRAIN_REFERENCE {
    tag "${meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(reference)

    output:
    tuple val(meta), path("signatures.csv")           , emit: signatures
    tuple val(meta), path("${prefix}_model")          , emit: model
    tuple val(meta), path("${prefix}_posterior.h5ad") , emit: h5ad
    tuple val(meta), path("${prefix}_history.png")    , emit: history_plot
    tuple val(meta), path("${prefix}_history.csv")    , emit: history
    tuple val(meta), path("${prefix}_qc.png")         , emit: qc_plot
    tuple val(meta), path("${prefix}_training.json")  , emit: summary
    tuple val(meta), path("c2l.warnings.txt")         , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                               , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    def own  = C2lArgs.join(C2lArgs.reference(meta))   // the reference's obs columns
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt train-reference \\
        --reference ${reference} \\
        ${own} \\
        --device ${task.accelerator ? 'cuda' : 'cpu'} \\
        --threads ${task.cpus} \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir -p ${prefix}_model && touch ${prefix}_model/model.pt
    echo 'gene,stub_type_a,stub_type_b' > signatures.csv
    touch ${prefix}_posterior.h5ad ${prefix}_history.png ${prefix}_qc.png
    echo 'epoch,elbo_train' > ${prefix}_history.csv
    echo '{}' > ${prefix}_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
