process READ_VISIUM {
    tag "${meta.id}"
    label 'process_low'

    conda "${moduleDir}/../../../containers/environment.yml"
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] ?
        'docker://ghcr.io/cell2location-nf/cell2location-nf:0.1.0' :
        'ghcr.io/cell2location-nf/cell2location-nf:0.1.0' }"

    input:
    tuple val(meta), path(section, stageAs: 'input/*')

    output:
    tuple val(meta), path("${meta.id}.h5ad")  , emit: h5ad
    tuple val(meta), path("${meta.id}.qc.csv"), emit: qc
    path "versions.yml"                       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args ?: ''
    def source = meta.input_type == 'h5ad' ? "--h5ad ${section}" : "--spaceranger-dir ${section}"
    def skip   = ['id', 'input_type'] as Set
    def metaArgs = meta.findAll { k, v -> !(k in skip) && v != null && v != '' }
                       .collect { k, v -> "--meta '${k}=${v.toString().replace("'", "'\\''")}'" }
                       .join(' ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} read-visium \\
        --sample '${meta.id}' \\
        ${source} \\
        ${metaArgs} \\
        ${args} \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    touch ${meta.id}.h5ad
    echo 'sample,n_spots' > ${meta.id}.qc.csv
    c2l versions --process '${task.process}' > versions.yml
    """
}
