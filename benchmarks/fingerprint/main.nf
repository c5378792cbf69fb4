/*
 * Times the samplesheet's folder fingerprint (subworkflows/local/samplesheet: folderFingerprint), the -resume key
 * of a section folder (issue 31), on the folders given:
 *   nextflow run benchmarks/fingerprint --dirs /tmp/hd_tree/outs,/tmp/hd_tree/outs/binned_outputs/square_008um
 */
include { folderFingerprint } from '../../subworkflows/local/samplesheet'

params.dirs    = ''
params.repeats = 5

workflow {
    params.dirs.tokenize(',').each { dir ->
        def path = file(dir)
        def first = folderFingerprint(path)
        def times = (1..params.repeats).collect { _i ->
            def t0 = System.nanoTime()
            folderFingerprint(path)
            (System.nanoTime() - t0) / 1.0e6
        }
        log.info "${dir}: ${first}; ${times.collect { t -> String.format('%.1f', t) }.join(', ')} ms (median ${String.format('%.1f', times.sort()[times.size().intdiv(2)])} ms)"
    }
}
