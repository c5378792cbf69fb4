process MAP_CELLS {
    tag "${meta.id}"
    label 'process_medium'
    label 'process_gpu'

    conda "${moduleDir}/../../../containers/environment.yml"
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] ?
        'docker://ghcr.io/cell2location-nf/cell2location-nf:0.1.0' :
        'ghcr.io/cell2location-nf/cell2location-nf:0.1.0' }"

    input:
    tuple val(meta), path(sections, stageAs: 'sections/*')
    path signatures

    output:
    tuple val(meta), path("*.cell2location.h5ad")         , emit: h5ad
    tuple val(meta), path("*_cell_abundance_w_sf.csv")    , emit: csv
    tuple val(meta), path("${meta.id}_model")             , emit: model
    tuple val(meta), path("${meta.id}_history.png")       , emit: history_plot
    tuple val(meta), path("${meta.id}_history.csv")       , emit: history
    tuple val(meta), path("${meta.id}_qc.png")            , emit: qc_plot
    tuple val(meta), path("${meta.id}_training.json")     , emit: summary
    path "versions.yml"                                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} map-cells \\
        ${sections} \\
        --signatures ${signatures} \\
        --run-id '${meta.id}' \\
        --device ${task.accelerator ? 'cuda' : 'cpu'} \\
        --threads ${task.cpus} \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    def samples = meta.samples ?: [meta.id]
    def touches = samples.collect { s ->
        "touch ${s}.cell2location.h5ad " + ['means', 'stds', 'q05', 'q95'].collect { st -> "${s}.${st}_cell_abundance_w_sf.csv" }.join(' ')
    }.join('\n    ')
    """
    ${touches}
    mkdir -p ${meta.id}_model && touch ${meta.id}_model/model.pt
    touch ${meta.id}_history.png ${meta.id}_qc.png
    echo 'epoch,elbo_train' > ${meta.id}_history.csv
    echo '{}' > ${meta.id}_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
