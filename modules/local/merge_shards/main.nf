process MERGE_SHARDS {
    tag "${meta.id}"
    label 'process_single'

    input:
    // meta: the model's meta (sections, n_shards); sections: its sections' READ_VISIUM h5ad files, in the order of
    // meta.sections; shards: every file MAP_CELLS wrote for the model's shards (tables, _training.json, _history.csv)
    tuple val(meta), path(sections, stageAs: 'sections/*'), path(shards, stageAs: 'shards/*')

    // written under <model>/, the folder they are published in (conf/modules.config)
    output:
    tuple val(meta), path("${meta.id}/*.cell2location.h5ad")      , emit: h5ad
    tuple val(meta), path("${meta.id}/*_cell_abundance_w_sf.csv") , emit: csv
    tuple val(meta), path("${meta.id}/${prefix}_history.png")     , emit: history_plot
    tuple val(meta), path("${meta.id}/${prefix}_history.csv")     , emit: history
    tuple val(meta), path("${meta.id}/${prefix}_training.json")   , emit: summary
    tuple val(meta), path("c2l.warnings.txt")             , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                                   , emit: versions

    script:
    def args  = task.ext.args ?: ''
    prefix    = task.ext.prefix ?: "${meta.id}"
    def files = sections instanceof List ? sections : [sections]
    def pairs = [meta.sections, files].transpose().collect { m, f -> "--section '${m.id}=${f}'" }.join(' \\\n        ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt merge-shards \\
        ${pairs} \\
        --shards ${meta.n_shards} \\
        --shard-dir shards \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir '${meta.id}'

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    def touches = meta.sections.collect { s ->
        "touch ${meta.id}/${s.id}.cell2location.h5ad " + ['means', 'stds', 'q05', 'q95'].collect { st -> "${meta.id}/${s.id}.${st}_cell_abundance_w_sf.csv" }.join(' ')
    }.join('\n    ')
    """
    mkdir -p ${meta.id}
    ${touches}
    touch ${meta.id}/${prefix}_history.png
    echo 'epoch,elbo_train,shard' > ${meta.id}/${prefix}_history.csv
    echo '{}' > ${meta.id}/${prefix}_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
