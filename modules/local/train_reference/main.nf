process TRAIN_REFERENCE {
    tag "${reference.baseName}"
    label 'process_medium'
    label 'process_gpu'

    conda "${moduleDir}/../../../containers/environment.yml"
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] ?
        'docker://ghcr.io/cell2location-nf/cell2location-nf:0.1.0' :
        'ghcr.io/cell2location-nf/cell2location-nf:0.1.0' }"

    input:
    path reference
    val labels_key

    output:
    path "signatures.csv"          , emit: signatures
    path "reference_model"         , emit: model
    path "reference_posterior.h5ad", emit: h5ad
    path "reference_history.png"   , emit: history_plot
    path "reference_history.csv"   , emit: history
    path "reference_qc.png"        , emit: qc_plot
    path "reference_training.json" , emit: summary
    path "versions.yml"            , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} train-reference \\
        --reference ${reference} \\
        --labels-key '${labels_key}' \\
        --device ${task.accelerator ? 'cuda' : 'cpu'} \\
        --threads ${task.cpus} \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    mkdir -p reference_model && touch reference_model/model.pt
    echo 'gene,stub_type_a,stub_type_b' > signatures.csv
    touch reference_posterior.h5ad reference_history.png reference_qc.png
    echo 'epoch,elbo_train' > reference_history.csv
    echo '{}' > reference_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
