#!/usr/bin/env nextflow
/*
 * cell2location-nf
 *
 * The complete cell2location workflow for any number of 10x Visium sections: read the sections, filter
 * and train the reference (or take ready signatures), map cell types with Cell2location (all sections in
 * one joint model, or one per section), and draw the spatial figures.
 *
 * main.nf is the only place that reads params: it checks them and the samplesheet, builds the channels,
 * and passes plain values down to the workflow.
 */

nextflow.enable.dsl = 2

include { CELL2LOCATION } from './workflows/cell2location'

def helpMessage() {
    """
    Usage:
      nextflow run main.nf -profile <docker|singularity|apptainer|conda|local>[,gpu] \\
          --input samplesheet.csv --reference reference.h5ad --labels_key cell_type --outdir results

    Inputs:
      --input                     samplesheet CSV: sample, spaceranger_dir or h5ad (+ n_cells_per_location,
                                  detection_alpha, any metadata columns)
      --reference                 single-cell reference .h5ad with raw counts     (or --signatures)
      --signatures                genes x cell types CSV from a previous run      (skips reference training)
      --labels_key / --batch_key / --categorical_covariate_keys / --reference_gene_id_column

    Main options:
      --mapping_mode joint|per_sample   [${params.mapping_mode}]
      --n_cells_per_location            [${params.n_cells_per_location}]
      --detection_alpha                 [${params.detection_alpha}]
      --ref_max_epochs                  [${params.ref_max_epochs}]   (ceiling: training stops at convergence)
      --map_max_epochs                  [${params.map_max_epochs}] (ceiling: training stops at convergence)
      --tutorial_settings               [${params.tutorial_settings}] (exactly the tutorial: fixed epochs, lr 0.002,
                                                1000-sample export)

    All parameters: nextflow_schema.json, docs/usage.md.
    """.stripIndent()
}

/*
 * Parameters: types from nextflow_schema.json (no plugin needed), then the rules between them.
 */
def validateParameters() {
    def schema = new groovy.json.JsonSlurper().parse(file("${projectDir}/nextflow_schema.json").toFile())
    def props = [:]
    schema['$defs'].each { name, group -> props.putAll(group.properties) }
    def errors = []
    def ignore = ['config_profile_name', 'config_profile_description', 'trace_report_suffix', 'testdata', 'help']
    params.each { key, value ->
        if (key in ignore || key.contains('-')) { return }
        def spec = props[key]
        if (spec == null) {
            log.warn "Unknown parameter --${key} (typo?); it is ignored"
            return
        }
        if (value == null) { return }
        def type = spec.type
        def ok = (type == 'string'  && value instanceof CharSequence) ||
                 (type == 'boolean' && value instanceof Boolean) ||
                 (type == 'integer' && (value instanceof Integer || value instanceof Long)) ||
                 (type == 'number'  && value instanceof Number)
        if (!ok) {
            errors << "--${key}: expected ${type}, got '${value}'"
        } else if (spec.enum && !(value in spec.enum)) {
            errors << "--${key}: must be one of ${spec.enum.join(', ')}, got '${value}'"
        } else if (spec.exclusiveMinimum != null && value <= spec.exclusiveMinimum) {
            errors << "--${key}: must be > ${spec.exclusiveMinimum}, got ${value}"
        } else if (spec.minimum != null && value < spec.minimum) {
            errors << "--${key}: must be >= ${spec.minimum}, got ${value}"
        } else if (spec.maximum != null && value > spec.maximum) {
            errors << "--${key}: must be <= ${spec.maximum}, got ${value}"
        }
    }
    if (!params.input) { errors << "--input: a samplesheet is required" }
    if (params.reference && params.signatures) { errors << "--reference and --signatures: give one, not both" }
    if (!params.reference && !params.signatures) { errors << "--reference or --signatures: one is required" }
    if (params.reference && !params.labels_key) { errors << "--labels_key: required with --reference" }
    if (params.require_gpu && !(workflow.profile.tokenize(',').contains('gpu'))) {
        errors << "--require_gpu: only meaningful with -profile gpu (no process is given a GPU without it)"
    }
    ['input', 'reference', 'signatures'].each { key ->
        if (params[key] && !file(params[key]).exists()) { errors << "--${key}: file not found: ${params[key]}" }
    }
    if (errors) {
        error("Invalid parameters:\n  " + errors.join('\n  '))
    }
}

/*
 * Samplesheet: one row per section. Errors name the row, the sample and the column.
 */
def readSamplesheet(String path, String baseDir) {
    def sheet = file(path)
    def lines = sheet.readLines().findAll { it.trim() }
    if (!lines) { error("Samplesheet ${path}: the file is empty") }
    def header = lines[0].split(',', -1).collect { it.trim() }
    def dup = header.findAll { h -> header.count(h) > 1 }.unique()
    if (dup) { error("Samplesheet ${path}: duplicated column(s) ${dup.join(', ')}") }
    if (!('sample' in header)) { error("Samplesheet ${path}: missing column 'sample' (columns: ${header.join(', ')})") }
    if (!('spaceranger_dir' in header) && !('h5ad' in header)) {
        error("Samplesheet ${path}: missing column 'spaceranger_dir' or 'h5ad' (columns: ${header.join(', ')})")
    }
    def base = baseDir ? file(baseDir) : sheet.parent
    def seen = [:]
    def rows = []
    sheet.splitCsv(header: true, strip: true).eachWithIndex { row, i ->
        def n = i + 2
        def sample = row.sample ?: ''
        def where = "Samplesheet ${path}, row ${n}, sample '${sample}'"
        if (!sample) { error("Samplesheet ${path}, row ${n}: field 'sample' is empty") }
        if (!(sample ==~ /[A-Za-z0-9_.\-]+/)) {
            error("${where}: field 'sample' may only contain letters, digits, '_', '.', '-'")
        }
        if (seen.containsKey(sample)) { error("${where}: field 'sample' is duplicated (also row ${seen[sample]})") }
        seen[sample] = n
        def sr = row.spaceranger_dir ?: ''
        def h5 = row.h5ad ?: ''
        if ((sr && h5) || (!sr && !h5)) { error("${where}: give exactly one of the fields 'spaceranger_dir' and 'h5ad'") }
        def field = sr ? 'spaceranger_dir' : 'h5ad'
        def raw = sr ?: h5
        def input = raw.startsWith('/') || raw.contains('://') ? file(raw) : base.resolve(raw)
        if (!input.exists()) { error("${where}: field '${field}': path does not exist: ${input}") }
        if (sr && !input.isDirectory()) { error("${where}: field 'spaceranger_dir': not a folder: ${input}") }
        if (h5 && input.isDirectory()) { error("${where}: field 'h5ad': is a folder, expected an .h5ad file: ${input}") }
        def meta = [id: sample, input_type: field]
        ['n_cells_per_location', 'detection_alpha'].each { key ->
            def v = row[key]
            if (v) {
                def num = v.isNumber() ? v.toBigDecimal() : null
                if (num == null || num <= 0) { error("${where}: field '${key}' must be a positive number, got '${v}'") }
                meta[key] = num
            }
        }
        row.each { k, v -> if (!(k in ['sample', 'spaceranger_dir', 'h5ad', 'n_cells_per_location', 'detection_alpha']) && v) { meta[k] = v } }
        rows << [meta, input]
    }
    if (!rows) { error("Samplesheet ${path}: no rows") }
    return rows
}

workflow {
    if (params.help) {
        log.info helpMessage()
        return
    }
    validateParameters()
    def rows = readSamplesheet(params.input, params.input_base_dir)
    log.info "cell2location-nf: ${rows.size()} section(s): ${rows.collect { it[0].id }.join(', ')}; mapping mode ${params.mapping_mode}"

    CELL2LOCATION(
        Channel.fromList(rows),
        params.reference  ? Channel.value(file(params.reference))  : Channel.empty(),
        params.signatures ? Channel.value(file(params.signatures)) : Channel.empty(),
        params.labels_key ?: '',
        params.mapping_mode,
    )

    // copied (not storeDir) so that a run whose sections all fail leaves no empty read_visium/ behind
    def qcSummary = file("${params.outdir}/read_visium/qc_summary.csv")
    CELL2LOCATION.out.qc
        .map { meta, qc -> qc }
        .collectFile(name: 'qc_summary.csv', keepHeader: true, skip: 1, sort: true)
        .subscribe { summary -> qcSummary.parent.mkdirs(); summary.copyTo(qcSummary) }

    CELL2LOCATION.out.versions
        .unique()
        .collectFile(name: 'software_versions.yml', sort: true, newLine: false,
                     storeDir: "${params.outdir}/pipeline_info")
}

workflow.onComplete {
    if (workflow.success) {
        log.info "cell2location-nf finished: results in ${params.outdir} (plot_spatial/, map_cells/, train_reference/, pipeline_info/)"
    } else {
        log.error "cell2location-nf failed: see the error above and ${params.outdir}/pipeline_info/"
    }
}
