/*
 * Command-line pieces the modules build from their inputs' meta (the samplesheet's and the reference's own
 * settings). Options that come from params are set in conf/modules.config (ext.args); what a task's meta says
 * is turned into options here, because the strict config syntax lets config closures read params and task
 * only, not a process's inputs.
 */
class C2lArgs {

    /** A value as one single-quoted shell word. */
    static String quote(Object value) {
        return "'" + value.toString().replace("'", "'\\''") + "'"
    }

    /** The non-empty options, space-separated. */
    static String join(List options) {
        return options.findAll { o -> o != null && o != '' }.join(' ')
    }

    /** The reference's obs columns (FILTER_REFERENCE, TRAIN_REFERENCE), from its meta (main.nf builds it). */
    static List<String> reference(Map meta) {
        return [
            "--labels-key ${quote(meta.labels_key)}".toString(),
            meta.batch_key                  ? "--batch-key ${quote(meta.batch_key)}".toString() : null,
            meta.categorical_covariate_keys ? "--categorical-covariate-keys ${quote(meta.categorical_covariate_keys)}".toString() : null,
        ]
    }
}
