process READ_VISIUM {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(section, stageAs: 'input/*')

    output:
    tuple val(meta), path("${prefix}.h5ad")  , emit: h5ad
    tuple val(meta), path("${prefix}.qc.csv"), emit: qc
    tuple val(meta), path("c2l.warnings.txt"), emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                      , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    // the section's own settings (samplesheet columns); its metadata columns become obs columns
    def own  = C2lArgs.join([
        meta.bin_size ? "--bin-size ${meta.bin_size}" : null,
        meta.layer ? "--layer ${C2lArgs.quote(meta.layer)}" : null,
    ] + (meta.metadata ?: [:]).collect { k, v -> "--obs ${C2lArgs.quote("${k}=${v}")}" })
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt read-visium \\
        --sample '${meta.id}' \\
        --${meta.input_type.replace('_', '-')} ${section} \\
        ${own} \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.h5ad
    printf 'sample,n_spots\n${meta.id},1000\n' > ${prefix}.qc.csv   # a nominal size: the workflow sizes the models from it
    c2l versions --process '${task.process}' > versions.yml
    """
}
