/*
 * What a run left behind, written by main.nf's workflow.onComplete into <outdir>/pipeline_info/:
 *   run_status.json          always: succeeded or failed, the error, and per section / model what finished
 *   failed_run_report.html   only when the run failed: the same as a page (error, what finished, its figures)
 *
 * The MultiQC report is the last step of a run, so a run in which a step failed has none; this page is the
 * report of what finished instead. It is built on the head node from the published outputs only (no Python, no
 * container), so it works wherever Nextflow runs. After a successful run (e.g. -resume once the input is fixed)
 * a failed_run_report.html left by an earlier failed run in the same outdir is removed.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths

class RunStatus {

    static final int MAX_FIGURES = 60
    static final int MAX_ERROR_LINES = 80

    /**
     * args: outdir (String), samplesheet (String or null), success (boolean), runName, start, complete,
     * duration (String), errorMessage, errorReport (String or null), stats (Map: succeeded, failed, ignored,
     * cached), commandLine (String). Returns the path of the page when one was written, else null.
     */
    static Path write(Map args) {
        if (!args.outdir) {
            return null
        }
        Path out = Paths.get(args.outdir.toString()).toAbsolutePath()
        if (!args.success && !Files.isDirectory(out)) {
            return null  // failed before anything ran (e.g. a bad parameter): nothing to report, no folder made
        }
        Path info = out.resolve('pipeline_info')
        Map status = collect(out, args)
        Files.createDirectories(info)
        info.resolve('run_status.json').toFile().text = JsonOutput.prettyPrint(JsonOutput.toJson(status)) + '\n'
        Path page = info.resolve('failed_run_report.html')
        if (args.success) {
            Files.deleteIfExists(page)
            return null
        }
        page.toFile().text = html(status)
        return page
    }

    /** The samplesheet's `sample` column (null when it cannot be read: the error is then about the sheet). */
    static List<String> expectedSamples(String samplesheet) {
        if (!samplesheet) {
            return null
        }
        try {
            def lines = new File(samplesheet).readLines().findAll { it.trim() }
            def header = lines[0].split(',', -1)*.trim()
            int col = header.indexOf('sample')
            if (col < 0) {
                return null
            }
            return lines.drop(1).collect { it.split(',', -1) }.findAll { it.size() > col }.collect { it[col].trim() }
                .findAll { it }.unique()
        } catch (Exception ignored) {
            return null
        }
    }

    static Map collect(Path out, Map args) {
        def rel = { Path p -> out.relativize(p).toString() }
        def files = { Path dir, Closure<Boolean> keep ->
            if (!Files.isDirectory(dir)) {
                return []
            }
            def found = []
            Files.walk(dir).withCloseable { stream ->
                stream.filter { Files.isRegularFile(it) && !it.fileName.toString().startsWith('.') && keep(it) }
                      .forEach { found << it }
            }
            return found.sort { it.toString() }
        }

        // sections: read, mapped (own h5ad from MAP_CELLS or MERGE_SHARDS), figures
        List<String> expected = expectedSamples(args.samplesheet as String)
        def readIds = files(out.resolve('read_visium'), { Path p -> p.fileName.toString().endsWith('.h5ad') })
            .collect { it.fileName.toString().replaceAll(/\.h5ad$/, '') }
        def mapped = files(out.resolve('map_cells'), { Path p -> p.fileName.toString().endsWith('.cell2location.h5ad') })
        def mappedIds = mapped.collect { it.fileName.toString().replaceAll(/\.cell2location\.h5ad$/, '') }.unique()
        def plots = files(out.resolve('plot_spatial'), { Path p -> p.fileName.toString().endsWith('.png') })
        def ids = ((expected ?: []) + readIds + mappedIds).unique()
        def sections = ids.collect { id ->
            def own = plots.findAll { it.parent.fileName.toString() == id || it.fileName.toString().startsWith("${id}.") }
            [sample: id, read: id in readIds, mapped: id in mappedIds, figures: own.size(),
             in_samplesheet: expected == null ? null : (id in expected)]
        }

        // the reference and the mapping models: their training summaries
        def summaries = files(out, { Path p -> p.fileName.toString().endsWith('_training.json') })
        def models = summaries.collect { Path p ->
            def js = [:]
            try {
                js = new JsonSlurper().parse(p.toFile()) as Map
            } catch (Exception ignored) {
                js = [:]
            }
            [file: rel(p), step: out.relativize(p).getName(0).toString(),
             model: p.fileName.toString().replaceAll(/_training\.json$/, ''),
             epochs: js.epochs, stop_reason: js.stop_reason, device: js.device, train_seconds: js.train_seconds]
        }
        def steps = ['read_visium', 'filter_reference', 'train_reference', 'map_cells', 'plot_spatial', 'regions',
                     'colocation', 'multiqc'].collectEntries { step ->
            [step, files(out.resolve(step), { Path p -> true }).size()]
        }.findAll { k, v -> v > 0 }
        def figures = (files(out.resolve('train_reference'), { Path p -> p.fileName.toString().endsWith('.png') }) +
                       files(out.resolve('map_cells'), { Path p -> p.fileName.toString().endsWith('.png') }) +
                       plots).collect { rel(it) }

        return [
            status       : args.success ? 'succeeded' : 'failed',
            run_name     : args.runName?.toString(),
            start        : args.start?.toString(),
            complete     : args.complete?.toString(),
            duration     : args.duration?.toString(),
            command_line : args.commandLine?.toString(),
            error_message: args.success ? null : (args.errorMessage?.toString() ?: 'unknown (see .nextflow.log)'),
            error_report : args.success ? null : args.errorReport?.toString(),
            tasks        : args.stats ?: [:],
            outdir       : out.toString(),
            samples_expected: expected,
            sections     : sections,
            models       : models,
            published_files_per_step: steps,
            figures      : figures,
            report       : Files.exists(out.resolve('multiqc/multiqc_report.html')) ? 'multiqc/multiqc_report.html' : null,
        ]
    }

    static String esc(Object o) {
        if (o == null) {
            return ''
        }
        return o.toString().replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;').replace('"', '&quot;')
    }

    static String mark(Boolean ok) {
        return ok ? '<td class="ok">yes</td>' : '<td class="no">no</td>'
    }

    static String html(Map s) {
        def sb = new StringBuilder()
        sb << '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        sb << "<title>cell2location-nf: run ${esc(s.run_name)} failed</title>\n"
        sb << '''<style>
body { font-family: sans-serif; margin: 2em; max-width: 80em; color: #222; }
h1 { color: #b00020; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.ok { background: #e3f4e1; } td.no { background: #fbe3e3; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 90%; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs figure { margin: 0; width: 30em; }
.figs img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 85%; color: #555; }
</style></head><body>
'''
        sb << "<h1>cell2location-nf: this run failed</h1>\n"
        sb << "<p>Run <b>${esc(s.run_name)}</b>, started ${esc(s.start)}, ended ${esc(s.complete)} (${esc(s.duration)}). "
        sb << 'The MultiQC report is the last step of a run, so this page stands in for it: the error, and what '
        sb << 'finished before it. Fix the cause and rerun the same command with <code>-resume</code>: the finished '
        sb << 'steps are taken from the cache.</p>\n'
        sb << "<h2>Error</h2>\n<pre>${esc(s.error_message)}</pre>\n"
        if (s.error_report) {
            def lines = s.error_report.toString().readLines()
            def shown = lines.take(MAX_ERROR_LINES)
            sb << "<details open><summary>Nextflow's error report${lines.size() > MAX_ERROR_LINES ? " (first ${MAX_ERROR_LINES} of ${lines.size()} lines)" : ''}</summary>\n"
            sb << "<pre>${esc(shown.join('\n'))}</pre></details>\n"
        }
        def t = s.tasks ?: [:]
        sb << "<p>Tasks: ${esc(t.succeeded)} succeeded, ${esc(t.cached)} from the cache, ${esc(t.failed)} failed, "
        sb << "${esc(t.ignored)} ignored.</p>\n"
        sb << "<p>Command: <code>${esc(s.command_line)}</code></p>\n"

        sb << '<h2>Sections</h2>\n'
        if (s.samples_expected == null) {
            sb << '<p>The samplesheet could not be read here (see the error).</p>\n'
        }
        if (s.sections) {
            sb << '<table><tr><th>sample</th><th>read (read_visium/)</th><th>mapped (map_cells/)</th><th>figures (plot_spatial/)</th></tr>\n'
            s.sections.each { sec ->
                sb << "<tr><td>${esc(sec.sample)}</td>${mark(sec.read)}${mark(sec.mapped)}<td>${sec.figures}</td></tr>\n"
            }
            sb << '</table>\n'
        } else {
            sb << '<p>No section was read.</p>\n'
        }

        sb << '<h2>Models trained</h2>\n'
        if (s.models) {
            sb << '<table><tr><th>step</th><th>model</th><th>epochs</th><th>why training stopped</th><th>device</th><th>training (s)</th></tr>\n'
            s.models.each { m ->
                sb << "<tr><td>${esc(m.step)}</td><td>${esc(m.model)}</td><td>${esc(m.epochs)}</td><td>${esc(m.stop_reason)}</td>"
                sb << "<td>${esc(m.device)}</td><td>${esc(m.train_seconds)}</td></tr>\n"
            }
            sb << '</table>\n'
        } else {
            sb << '<p>No model finished training.</p>\n'
        }

        sb << '<h2>Published files per step</h2>\n'
        if (s.published_files_per_step) {
            sb << '<table><tr><th>folder</th><th>files</th></tr>\n'
            s.published_files_per_step.each { k, v -> sb << "<tr><td>${esc(k)}/</td><td>${v}</td></tr>\n" }
            sb << '</table>\n'
        } else {
            sb << '<p>Nothing was published.</p>\n'
        }

        if (s.figures) {
            def shown = s.figures.take(MAX_FIGURES)
            sb << "<h2>Figures of the finished steps${s.figures.size() > MAX_FIGURES ? " (first ${MAX_FIGURES} of ${s.figures.size()})" : ''}</h2>\n<div class=\"figs\">\n"
            shown.each { f ->
                sb << "<figure><a href=\"../${esc(f)}\"><img src=\"../${esc(f)}\" alt=\"${esc(f)}\" loading=\"lazy\"></a>"
                sb << "<figcaption>${esc(f)}</figcaption></figure>\n"
            }
            sb << '</div>\n'
        }
        sb << '<p>The same facts as JSON: <code>pipeline_info/run_status.json</code>.</p>\n</body></html>\n'
        return sb.toString()
    }
}
