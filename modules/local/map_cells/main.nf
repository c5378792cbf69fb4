process MAP_CELLS {
    tag "${meta.shard ? "${meta.id} ${meta.shard.tag}" : meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(sections, stageAs: 'sections/*')  // meta.sections: the sections' metas, in the files' order;
                                                            // meta.shard (optional): [index, count, tag] of a shard
    path signatures

    // written under <model>/ (a shard: <model>/shards/), the folder they are published in (conf/modules.config)
    output:
    tuple val(meta), path("${dir}/*.cell2location.h5ad")      , emit: h5ad, optional: true  // not for a shard
    tuple val(meta), path("${dir}/*_cell_abundance_w_sf.csv") , emit: csv
    tuple val(meta), path("${dir}/${prefix}_model")           , emit: model
    tuple val(meta), path("${dir}/${prefix}_history.png")     , emit: history_plot
    tuple val(meta), path("${dir}/${prefix}_history.csv")     , emit: history
    tuple val(meta), path("${dir}/${prefix}_qc.png")          , emit: qc_plot
    tuple val(meta), path("${dir}/${prefix}_training.json")   , emit: summary
    tuple val(meta), path("c2l.warnings.txt")             , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                                   , emit: versions

    script:
    def args  = task.ext.args ?: ''
    prefix    = task.ext.prefix ?: (meta.shard ? "${meta.id}.${meta.shard.tag}" : "${meta.id}")
    dir       = meta.shard ? "${meta.id}/shards" : "${meta.id}"
    def files = sections instanceof List ? sections : [sections]
    def pairs = [meta.sections, files].transpose().collect { m, f -> "--section '${m.id}=${f}'" }.join(' \\\n        ')
    // the model's own settings: cells per location (shared by its sections), each section's detection_alpha, the shard
    def own   = C2lArgs.join([
        "--n-cells-per-location ${meta.n_cells_per_location}",
        meta.shard ? "--shard ${meta.shard.index}/${meta.shard.count}" : null,
    ] + meta.sections.collect { s -> "--detection-alpha ${C2lArgs.quote("${s.id}=${s.detection_alpha}")}" })
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt map-cells \\
        ${pairs} \\
        --signatures ${signatures} \\
        --device ${task.accelerator ? 'cuda' : 'cpu'} \\
        --threads ${task.cpus} \\
        ${own} \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir '${dir}'

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: (meta.shard ? "${meta.id}.${meta.shard.tag}" : "${meta.id}")
    dir    = meta.shard ? "${meta.id}/shards" : "${meta.id}"
    def part = meta.shard ? ".${meta.shard.tag}" : ''
    def touches = meta.sections.collect { s ->
        (meta.shard ? '' : "touch ${dir}/${s.id}.cell2location.h5ad\n    ") +
            "touch " + ['means', 'stds', 'q05', 'q95'].collect { st -> "${dir}/${s.id}${part}.${st}_cell_abundance_w_sf.csv" }.join(' ')
    }.join('\n    ')
    // the model's settings as the real step records them (model.detection_alpha), for the stub tests
    def stubSummary = groovy.json.JsonOutput.toJson([stub: true, model: [
        detection_alpha: meta.sections.collectEntries { s -> [s.id, s.detection_alpha as double] },
        n_cells_per_location: meta.n_cells_per_location as double]])
    """
    mkdir -p ${dir}/${prefix}_model && touch ${dir}/${prefix}_model/model.pt
    ${touches}
    touch ${dir}/${prefix}_history.png ${dir}/${prefix}_qc.png
    echo 'epoch,elbo_train' > ${dir}/${prefix}_history.csv
    echo '${stubSummary}' > ${dir}/${prefix}_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
