process MULTIQC {
    tag 'report'
    label 'process_single'

    input:
    path(sections,  stageAs: 'sections/*')   // READ_VISIUM's <sample>.qc.csv
    path(reference, stageAs: 'reference/*')  // reference_genes.csv, reference_training.json, reference_history.csv
    path(models,    stageAs: 'models/*')     // <run>_training.json, <run>_history.csv of every mapping model
    path(figures,   stageAs: 'figures/f?/*') // PLOT_SPATIAL's and REGIONS' PNGs (one folder each: names may repeat)
    path(versions,  stageAs: 'info/software_versions.yml')
    path(params_json, stageAs: 'info/params.json')
    val expected_sections                    // the run's section ids (those without results are named)

    output:
    path "multiqc_report.html", emit: report
    path "multiqc_report_data", emit: data
    path "content"            , emit: content   // the custom content, multiqc_config.yaml and verdicts.json
    path "c2l.warnings.txt"   , emit: warnings, optional: true  // the verdicts that are not PASS, shown by main.nf
    path "versions.yml"       , emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    c2l --pipeline-digest ${task.ext.c2l_digest} --warnings-file c2l.warnings.txt report \\
        --sections sections \\
        --reference reference \\
        --models models \\
        --figures figures \\
        --versions info/software_versions.yml \\
        --params info/params.json \\
        --expected-sections '${expected_sections.join(',')}' \\
        --outdir content

    multiqc --config content/multiqc_config.yaml ${args} --force --no-ansi --filename multiqc_report.html --outdir . content

    c2l versions --process '${task.process}' > versions.yml
    """

    stub:
    """
    mkdir -p multiqc_report_data content
    touch multiqc_report.html content/verdicts.json
    c2l versions --process '${task.process}' > versions.yml
    """
}
