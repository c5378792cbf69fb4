process MAP_CELLS {
    tag "${meta.shard ? "${meta.id} ${meta.shard.tag}" : meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(sections, stageAs: 'sections/*')  // meta.sections: the sections' metas, in the files' order;
                                                            // meta.shard (optional): [index, count, tag] of a shard
    path signatures

    output:
    tuple val(meta), path("*.cell2location.h5ad")         , emit: h5ad, optional: true  // not for a shard
    tuple val(meta), path("*_cell_abundance_w_sf.csv")    , emit: csv
    tuple val(meta), path("${prefix}_model")              , emit: model
    tuple val(meta), path("${prefix}_history.png")        , emit: history_plot
    tuple val(meta), path("${prefix}_history.csv")        , emit: history
    tuple val(meta), path("${prefix}_qc.png")             , emit: qc_plot
    tuple val(meta), path("${prefix}_training.json")      , emit: summary
    tuple val(meta), path("c2l.warnings.txt")             , emit: warnings, optional: true  // the step's warnings, shown by main.nf
    path "versions.yml"                                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args  = task.ext.args ?: ''
    prefix    = task.ext.prefix ?: "${meta.id}"
    def files = sections instanceof List ? sections : [sections]
    def pairs = [meta.sections, files].transpose().collect { m, f -> "--section '${m.id}=${f}'" }.join(' \\\n        ')
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt map-cells \\
        ${pairs} \\
        --signatures ${signatures} \\
        --device ${task.accelerator ? 'cuda' : 'cpu'} \\
        --threads ${task.cpus} \\
        ${args} \\
        --prefix '${prefix}' \\
        --outdir .

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    def part = meta.shard ? ".${meta.shard.tag}" : ''
    def touches = meta.sections.collect { s ->
        (meta.shard ? '' : "touch ${s.id}.cell2location.h5ad\n    ") +
            "touch " + ['means', 'stds', 'q05', 'q95'].collect { st -> "${s.id}${part}.${st}_cell_abundance_w_sf.csv" }.join(' ')
    }.join('\n    ')
    // the model's settings as the real step records them (model.detection_alpha), for the stub tests
    def stubSummary = groovy.json.JsonOutput.toJson([stub: true, model: [
        detection_alpha: meta.sections.collectEntries { s -> [s.id, s.detection_alpha as double] },
        n_cells_per_location: meta.n_cells_per_location as double]])
    """
    ${touches}
    mkdir -p ${prefix}_model && touch ${prefix}_model/model.pt
    touch ${prefix}_history.png ${prefix}_qc.png
    echo 'epoch,elbo_train' > ${prefix}_history.csv
    echo '${stubSummary}' > ${prefix}_training.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
