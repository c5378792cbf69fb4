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

include { CELL2LOCATION   } from './workflows/cell2location'
include { MULTIQC         } from './modules/local/multiqc/main'
include { readSamplesheet } from './subworkflows/local/samplesheet'

def helpMessage(Map p) {
    """
    Usage:
      nextflow run main.nf -profile <docker|singularity|apptainer|conda|local>[,gpu] \\
          --input samplesheet.csv --reference reference.h5ad --labels_key cell_type --outdir results

    Inputs:
      --input                     samplesheet CSV: sample, spaceranger_dir or h5ad (+ n_cells_per_location,
                                  detection_alpha, bin_size, layer, any metadata columns)
      --reference                 single-cell reference .h5ad with raw counts     (or --signatures)
      --signatures                genes x cell types CSV from a previous run      (skips reference training)
      --labels_key / --batch_key / --categorical_covariate_keys / --reference_gene_id_column
      --reference_layer           the reference's layer with raw counts, or 'raw' for .raw (default: X)

    Main options:
      --mapping_mode joint|per_sample   [${p.mapping_mode}]
      --n_cells_per_location            [${p.n_cells_per_location}]
      --detection_alpha                 [${p.detection_alpha}]
      --ref_max_epochs                  [${p.ref_max_epochs}]   (ceiling: training stops at convergence)
      --map_max_epochs                  [${p.map_max_epochs}] (ceiling: training stops at convergence)
      --max_locations_per_model         [${p.max_locations_per_model ?: 'from the memory model'}] (larger models are split into shards)
      --gpu_memory_gb                   [${p.gpu_memory_gb}]   (memory budget of one mapping model)
      --tutorial_settings               [${p.tutorial_settings}] (exactly the tutorial: fixed epochs, lr 0.002,
                                                1000-sample export)

    All parameters: nextflow_schema.json, docs/usage.md.
    """.stripIndent()
}

/*
 * Parameters: types from nextflow_schema.json (no plugin needed), then the rules between them.
 */
def validateParameters(Map p) {
    def schema = new groovy.json.JsonSlurper().parse(file("${projectDir}/nextflow_schema.json").toFile())
    def props = [:]
    schema['$defs'].each { _name, group -> props.putAll(group.properties) }
    def errors = []
    def ignore = ['help']
    def misspelt = [:]   // --n-cells-per-location, nCellsPerLocation: refused with the name (they were dropped)
    p.each { key, value ->
        if (key in ignore) { return }
        def spec = props[key]
        if (spec == null) {
            def snake = key.replace('-', '_').replaceAll(/([a-z0-9])([A-Z])/, '$1_$2').toLowerCase()
            if (props.containsKey(snake)) {
                misspelt[snake] = (misspelt[snake] ?: []) + [key]
            } else {
                log.warn "Unknown parameter --${key} (typo?); it is ignored"
            }
            return
        }
        if (value == null) { return }
        if (key == 'detection_alpha' && value instanceof CharSequence) {   // several values: each model fitted per value
            def parts = value.tokenize(',')*.trim()
            if (!parts || !parts.every { part -> part.isBigDecimal() && (part as BigDecimal) > 0 } || parts.toSet().size() != parts.size()) {
                errors << "--detection_alpha: expected a positive number or distinct comma-separated numbers (e.g. 20,200), got '${value}'"
            }
            return
        }
        if (spec.format in ['file-path', 'directory-path']) { return }   // checked by checkPathParams
        def type = spec.type
        def ok = (type == 'string'  && (value instanceof CharSequence || (key == 'colocation_factors' && value instanceof Integer))) ||
                 (type == 'boolean' && value instanceof Boolean) ||
                 (type == 'integer' && (value instanceof Integer || value instanceof Long)) ||
                 (type == 'number'  && value instanceof Number)
        if (!ok) {
            errors << "--${key}: expected ${type}, got '${value}'"
        } else if (spec['enum'] && !(value in spec['enum'])) {
            errors << "--${key}: must be one of ${spec['enum'].join(', ')}, got '${value}'"
        } else if (spec.exclusiveMinimum != null && value <= spec.exclusiveMinimum) {
            errors << "--${key}: must be > ${spec.exclusiveMinimum}, got ${value}"
        } else if (spec.minimum != null && value < spec.minimum) {
            errors << "--${key}: must be >= ${spec.minimum}, got ${value}"
        } else if (spec.maximum != null && value > spec.maximum) {
            errors << "--${key}: must be <= ${spec.maximum}, got ${value}"
        } else if (spec.pattern && key != 'colocation_factors' && !("${value}" ==~ spec.pattern)) {
            errors << "--${key}: '${value}' is not of the form ${spec.pattern} (${spec.description})"
        }
    }
    misspelt.each { snake, keys ->
        errors << "--${keys[0]}: pipeline parameters are written with underscores: --${snake} " +
                  "(on the command line and in a -params-file; --${keys[0]} would be ignored)"
    }
    if (p.colocation_factors != null && !("${p.colocation_factors}" ==~ /\s*[0-9]+(\s*,\s*[0-9]+)*\s*/)) {
        errors << "--colocation_factors: expected comma-separated numbers of factors, e.g. 5,10,15, got '${p.colocation_factors}'"
    }
    if (!p.input) { errors << "--input: a samplesheet is required" }
    if (p.reference && p.signatures) { errors << "--reference and --signatures: give one, not both" }
    if (!p.reference && !p.signatures) { errors << "--reference or --signatures: one is required" }
    if (p.reference && !p.labels_key) { errors << "--labels_key: required with --reference" }
    if (p.require_gpu && !(workflow.profile.tokenize(',').contains('gpu'))) {
        errors << "--require_gpu: only meaningful with -profile gpu (no process is given a GPU without it)"
    }
    errors.addAll(checkPathParams(p, props))
    if (errors) {
        error("Invalid parameters:\n  " + errors.join('\n  '))
    }
}

/*
 * Every path parameter of nextflow_schema.json (format file-path or directory-path), before any task starts:
 * given a value, existing, of the right kind; --outdir a folder that can be created and written.
 */
def checkPathParams(Map p, Map props) {
    def errors = []
    props.each { key, spec ->
        if (!(spec.format in ['file-path', 'directory-path'])) { return }
        def value = p[key]
        if (value == null) { return }
        if (value instanceof Boolean) { errors << "--${key}: needs a path, got none (--${key} without a value?)"; return }
        if (!(value instanceof CharSequence)) { errors << "--${key}: expected a path, got '${value}'"; return }
        if (!value.toString().trim()) {
            if (key == 'outdir') { errors << "--outdir: an empty path; give a folder" }
            return   // an empty optional path is the same as leaving it out
        }
        def path = file(value.toString())
        def local = path.toUri().scheme == 'file'
        if (key == 'outdir') {
            if (!local) { return }
            if (path.exists() && !path.isDirectory()) { errors << "--outdir: ${value} is a file, not a folder"; return }
            def existing = nearestExisting(path)
            if (existing != null && !existing.isDirectory()) {
                errors << "--outdir: cannot create ${value}: ${existing} is a file, not a folder"
            } else if (existing != null && !java.nio.file.Files.isWritable(existing)) {
                errors << "--outdir: cannot write to ${existing} (permission denied)"
            }
            return
        }
        if (!path.exists()) {
            errors << "--${key}: ${spec.format == 'directory-path' ? 'folder' : 'file'} not found: ${value}"
        } else if (spec.format == 'file-path' && path.isDirectory()) {
            errors << "--${key}: ${value} is a folder, expected a file"
        } else if (spec.format == 'directory-path' && !path.isDirectory()) {
            errors << "--${key}: ${value} is a file, expected a folder"
        } else if (local && !java.nio.file.Files.isReadable(path)) {
            errors << "--${key}: ${value} cannot be read (permission denied)"
        }
    }
    return errors
}

/*
 * The path itself, or its nearest ancestor that exists (null: none does).
 */
def nearestExisting(path) {
    return path == null || path.exists() ? path : nearestExisting(path.parent)
}

/*
 * --detection_alpha as a list: one number, or several ('20,200'): then every model is fitted once per value.
 */
def detectionAlphas(Map p) {
    return "${p.detection_alpha}".tokenize(',')*.trim().collect { alpha -> alpha as BigDecimal }
}

/*
 * At the end of every run: pipeline_info/run_status.json (and failed_run_report.html when a step failed, see
 * lib/RunStatus.groovy), then the run's last console line. run: outdir, samplesheet, help, metadata (workflow).
 */
def onRunComplete(Map run) {
    def wf = run.metadata
    def page = null
    if (run.outdir && !run.help) {
        try {
            page = RunStatus.write(
                outdir:       run.outdir,
                samplesheet:  run.samplesheet ? "${run.samplesheet}" : null,
                success:      wf.success,
                runName:      wf.runName,
                start:        wf.start,
                complete:     wf.complete,
                duration:     wf.duration,
                errorMessage: wf.errorMessage,
                errorReport:  wf.errorReport,
                stats:        [succeeded: wf.stats.succeedCount, failed: wf.stats.failedCount,
                               ignored: wf.stats.ignoredCount, cached: wf.stats.cachedCount],
                commandLine:  wf.commandLine,
            )
        } catch (Exception e) {
            log.warn "pipeline_info/run_status.json not written: ${e.message}"
        }
    }
    // a kill (scancel, a scheduler's time limit, Ctrl-C) has no failed task to show above: say so instead
    def signal = wf.success ? null : "${wf.errorMessage ?: ''}".find(/\bSIG[A-Z]+\b/)
    if (wf.success) {
        log.info "cell2location-nf finished: results in ${run.outdir} (multiqc/multiqc_report.html, plot_spatial/, map_cells/, train_reference/, pipeline_info/)"
    } else if (signal) {
        log.error "cell2location-nf was killed (${signal}) after ${wf.duration}: " +
            "${wf.stats.succeedCount} task(s) finished, ${wf.stats.cachedCount} cached, " +
            "${wf.stats.failedCount} failed; rerun the same command with -resume to continue" +
            (page ? "; what finished: ${page}" : '')
    } else {
        log.error "cell2location-nf failed: see the error above" +
            (page ? "; what finished: ${page}" : " and ${run.outdir}/pipeline_info/")
    }
}

workflow {
    // pipeline_info/run_status.json always; failed_run_report.html (what finished, the error) when a step failed.
    // Registered first, so that it also runs when the parameters or the samplesheet are rejected. (The handler
    // resolves names against the run's metadata first: it gets what it needs as captured values.)
    def run = [outdir: params.outdir, samplesheet: params.input, help: params.help, metadata: workflow]
    workflow.onComplete { onRunComplete(run) }

    // the functions above get params as an argument (the strict syntax keeps params to the entry workflow), through
    // one variable: Nextflow 24.10's parser refuses `params` itself as an argument more than once in a workflow body
    // ("Variable `params` already defined in the process scope")
    def options = params
    if (params.help) {
        log.info helpMessage(options)
        return
    }
    validateParameters(options)
    // institutional profiles (nextflow.config: nf-core/configs or --custom_config_base): one line when not read
    if (System.getenv('NXF_OFFLINE') && params.custom_config_base?.toString()?.startsWith('http')) {
        log.info "Institutional profiles (nf-core/configs) not loaded: NXF_OFFLINE is set (--custom_config_base <folder> reads a local copy)"
    }
    if (params.config_profile_description) {
        log.info "Config profile: ${params.config_profile_description}"
    }
    // one [meta, path] per section; every rule of assets/schema_input.json checked before any task starts
    def rows = readSamplesheet(
        path:         params.input,
        schema:       "${projectDir}/assets/schema_input.json",
        base_dir:     params.input_base_dir,
        defaults:     [n_cells_per_location: params.n_cells_per_location, detection_alpha: detectionAlphas(options)[0]],
        mapping_mode: params.mapping_mode,
    )
    log.info "cell2location-nf: ${rows.size()} section(s): ${rows.collect { row -> row[0].id }.join(', ')}; mapping mode ${params.mapping_mode}"

    // the reference's meta carries the obs columns its steps read (the options go in through ext.args)
    def refMeta = [
        id:                         'reference',
        labels_key:                 params.labels_key,
        batch_key:                  params.batch_key,
        categorical_covariate_keys: params.categorical_covariate_keys,
        gene_id_column:             params.reference_gene_id_column,
        layer:                      params.reference_layer,
    ]
    // how large one mapping model may be before it is split into shards (docs/usage.md, "Large data")
    def memoryModel = file("${projectDir}/assets/memory_model.json")
    def shardBudget = [
        max_locations: params.max_locations_per_model,
        memory_gb:     params.gpu_memory_gb,
        coefficients:  memoryModel.exists() ? new groovy.json.JsonSlurper().parse(memoryModel.toFile()) : null,
    ]
    CELL2LOCATION(
        Channel.fromList(rows),
        params.reference  ? Channel.value([refMeta, file(params.reference)]) : Channel.empty(),
        params.signatures ? Channel.value(file(params.signatures))           : Channel.empty(),
        params.mapping_mode,
        shardBudget,
        detectionAlphas(options),
        params.regions as boolean,
        params.colocation_factors as boolean,
    )

    // copied (not storeDir) so that a run whose sections all fail leaves no empty read_visium/ behind
    def qcSummary = file("${params.outdir}/read_visium/qc_summary.csv")
    CELL2LOCATION.out.qc
        .map { _meta, qc -> qc }
        .collectFile(name: 'qc_summary.csv', keepHeader: true, skip: 1, sort: true)
        .subscribe { summary -> qcSummary.parent.mkdirs(); summary.copyTo(qcSummary) }

    // the steps' warnings, in the console as they come and in pipeline_info/warnings.txt
    CELL2LOCATION.out.warnings
        .map { label, txt -> txt.readLines().findAll { line -> line.trim() }.collect { line -> "${label}: ${line}" } }
        .filter { lines -> lines }
        .map { lines -> lines.each { line -> log.warn line }; lines.join('\n') + '\n' }
        .collectFile(name: 'warnings.txt', sort: true, storeDir: "${params.outdir}/pipeline_info")

    def ch_versions_file = CELL2LOCATION.out.versions
        .unique()
        .collectFile(name: 'software_versions.yml', sort: true, newLine: false,
                     storeDir: "${params.outdir}/pipeline_info")

    // one MultiQC report of the run (docs/output.md, multiqc/), unless --skip_multiqc
    if (!params.skip_multiqc) {
        def plainParams = options.collectEntries { k, v ->
            [k, (v == null || v instanceof Number || v instanceof Boolean) ? v : v.toString()]
        }
        def paramsJson = groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(plainParams))
        MULTIQC(
            CELL2LOCATION.out.report_sections.collect().ifEmpty([]),
            CELL2LOCATION.out.report_reference.collect().ifEmpty([]),
            CELL2LOCATION.out.report_models.collect().ifEmpty([]),
            CELL2LOCATION.out.figures.map { _meta, f -> f }.mix(CELL2LOCATION.out.region_plots.flatten()).collect().ifEmpty([]),
            ch_versions_file,
            Channel.of(paramsJson).collectFile(name: 'params.json', newLine: true),
            rows.collect { row -> row[0].id },
        )
        MULTIQC.out.warnings.subscribe { txt -> txt.readLines().findAll { line -> line.trim() }.each { line -> log.warn "MULTIQC: ${line}" } }
    }
}
