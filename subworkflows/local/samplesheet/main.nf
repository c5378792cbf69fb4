/*
 * The samplesheet, read against assets/schema_input.json without plugins.
 *
 * Every column's type, pattern and rule lives in the schema; this file only interprets it: the nf-schema
 * keywords the schema uses (type, pattern, format + exists, exclusiveMinimum/minimum/maximum, enum, required,
 * meta, errorMessage, uniqueEntries) and the pipeline's own x- keywords (x-default-param, x-default-by,
 * x-default-if-path, x-default-from-json, x-requires, x-exactly-one-of, x-same-in-joint-model). Rules across rows are checked here, before any task starts. Errors name the row,
 * the sample and the field:
 *     Samplesheet <path>, row <n>, sample '<id>': field '<column>' <what is wrong>
 */

/*
 * Returns [ [meta, path], ... ], one per row, in the samplesheet's order. meta holds the columns that the
 * schema maps to meta (id, n_cells_per_location, detection_alpha: empty cells take the value of the param
 * the schema names), input_type ('spaceranger_dir' or 'h5ad') and metadata (the other non-empty columns).
 */
def readSamplesheet(Map opts) {
    // opts: path, schema, base_dir (null: the samplesheet's folder), defaults (param name -> value), mapping_mode
    def path   = opts.path
    def schema = new groovy.json.JsonSlurper().parse(file(opts.schema).toFile())
    def items  = schema.items
    def props  = items.properties
    def sheet  = file(path)
    if (sheet.name.toLowerCase() ==~ /.*\.(xlsx|xls|ods)$/) {
        error("Samplesheet ${path}: a spreadsheet workbook, not a CSV file; save it as CSV (comma-separated)")
    }
    // a UTF-8 byte-order mark (Excel's "CSV UTF-8") would otherwise become part of the first column's name
    def text   = sheet.text.replaceFirst('^\uFEFF', '')
    def lines  = text.readLines().findAll { line -> line.trim() }
    if (!lines) { error("Samplesheet ${path}: the file is empty") }
    // CSV as RFC 4180 writes it: "donor 1, batch 2" is one field (quotes, commas and line breaks inside quotes)
    def parsed = parseCsv(text)
    if (parsed.error) { error("Samplesheet ${path}: ${parsed.error}") }
    def header = parsed.records[0].collect { h -> h.trim() }
    if (header.size() == 1) {   // Excel in many locales saves 'CSV' with ';', and some tools write tabs
        def sep = [';': 'semicolons', '\t': 'tabs'].find { ch, _name -> lines[0].contains(ch) }
        if (sep) { error("Samplesheet ${path}: the header is separated by ${sep.value}, not commas; save it as comma-separated CSV") }
    }
    def dup = header.findAll { h -> h && header.count(h) > 1 }.unique()
    if (dup) { error("Samplesheet ${path}: duplicated column(s) ${dup.join(', ')}") }
    // a column without a name (a trailing comma) is ignored while it is empty, and an error where it holds a value
    def unnamed = [:]
    header.eachWithIndex { h, i -> if (!h) { unnamed["__unnamed_${i + 1}".toString()] = i + 1; header[i] = "__unnamed_${i + 1}".toString() } }
    props.keySet().each { col ->   // 'Sample' or 'H5AD' for 'sample' or 'h5ad'
        def near = header.find { h -> h != col && h.equalsIgnoreCase(col) }
        if (near && !(col in header)) { error("Samplesheet ${path}: column '${near}' must be written '${col}' (column names are case-sensitive)") }
    }
    items.required.each { col ->
        if (!(col in header)) { error("Samplesheet ${path}: missing column '${col}' (columns: ${header.join(', ')})") }
    }
    def oneOf = items.'x-exactly-one-of' ?: []
    if (oneOf && !oneOf.any { col -> col in header }) {
        error("Samplesheet ${path}: missing column ${oneOf.collect { col -> "'${col}'" }.join(' or ')} (columns: ${header.join(', ')})")
    }
    def base = opts.base_dir ? file(opts.base_dir) : sheet.parent
    def rows = []
    parsed.records.drop(1).eachWithIndex { fields, i ->
        def n = i + 2
        def row = [:]
        header.eachWithIndex { h, j -> row[h] = j < fields.size() ? fields[j] : '' }
        def sample = row.sample ?: ''
        def where = sample ? "Samplesheet ${path}, row ${n}, sample '${sample}'" : "Samplesheet ${path}, row ${n}"
        def extra = fields.drop(header.size()).findAll { v -> v }
        if (extra) {
            error("${where}: ${fields.size()} fields for ${header.size()} columns (the value '${extra[0]}' has no column; " +
                  "a value with a comma must be in double quotes)")
        }
        items.required.each { col -> if (!row[col]) { error("${where}: field '${col}' is empty") } }
        unnamed.each { key, col ->
            if (row[key]) { error("${where}: column ${col} has the value '${row[key]}' but no name in the header") }
            row.remove(key)
        }
        def given = oneOf.findAll { col -> row[col] }
        if (oneOf && given.size() != 1) {
            error("${where}: give exactly one of the fields ${oneOf.collect { col -> "'${col}'" }.join(' and ')}")
        }
        def meta = [:]
        def input = null
        props.each { col, spec ->
            def raw = row[col] ?: ''
            if (raw && spec.'x-requires' && !row[spec.'x-requires']) {
                error("${where}: field '${col}' needs the field '${spec.'x-requires'}'")
            }
            if (!raw && spec.'x-default-if-path' && row[spec.'x-default-if-path'.under]) {  // e.g. a Visium HD folder
                def rule = spec.'x-default-if-path'
                def dir = row[rule.under].startsWith('/') ? file(row[rule.under]) : base.resolve(row[rule.under])
                if (rule.any.any { sub -> dir.resolve(sub).exists() }) { raw = rule.value.toString(); row[col] = raw }
            }
            if (!raw && spec.'x-default-from-json' && row[spec.'x-default-from-json'.under]) {  // a Visium HD bin folder
                def rule = spec.'x-default-from-json'
                def dir = row[rule.under].startsWith('/') ? file(row[rule.under]) : base.resolve(row[rule.under])
                def json = dir.resolve(rule.file)
                def found = null
                if (json.isFile()) {
                    try {
                        found = new groovy.json.JsonSlurper().parse(json.toFile())
                    } catch (Exception e) {
                        error("${where}: field '${rule.under}': ${rule.file} is not valid JSON: ${e.message}")
                    }
                }
                def value = found instanceof Map ? found[rule.key] : null
                if (value != null) {
                    raw = value.toString().isBigDecimal() ? value.toString().toBigDecimal().stripTrailingZeros().toPlainString() : value.toString()
                    row[col] = raw
                }
            }
            if (!raw && spec.'x-default-by') {  // a default that depends on another column (e.g. the Visium HD bin size)
                def by = spec.'x-default-by'
                raw = by.values[(row[by.column] ?: '').trim()]?.toString() ?: ''
            }
            if (!raw && spec.'x-default-param') { raw = opts.defaults[spec.'x-default-param']?.toString() ?: '' }
            if (!raw) { return }
            def value = checkField(raw, spec, "${where}: field '${col}'", base)
            if (spec.format in ['file-path', 'directory-path']) { input = value }
            (spec.meta ?: []).each { key -> meta[key] = value }
        }
        meta.input_type = given ? given[0] : null
        // a folder's cache key: Nextflow's is its path, size and time, which editing a file inside does not change
        if (input != null && input.isDirectory()) { meta.fingerprint = folderFingerprint(input) }
        meta.metadata = row.findAll { k, v -> !props.containsKey(k) && v }.collectEntries { k, v -> [k, v] }
        rows << [meta, input, n]
    }
    if (!rows) { error("Samplesheet ${path}: no rows") }
    checkAcrossRows(path, schema, rows, opts.mapping_mode)
    checkSameSection(path, rows)
    return rows.collect { meta, input, _n -> [meta, input] }
}

/*
 * One field against its schema entry; returns the value in its type (a path for file and folder fields).
 */
def checkField(String raw, Map spec, String where, base) {
    def why = spec.errorMessage
    def value = raw
    if (spec.type in ['number', 'integer']) {
        def num = raw.isNumber() ? raw.toBigDecimal() : null
        if (num == null || (spec.type == 'integer' && num.scale() > 0 && num != num.setScale(0, java.math.RoundingMode.DOWN))) {
            error("${where} ${why ?: "must be a ${spec.type}"}, got '${raw}'")
        }
        value = spec.type == 'integer' ? num.toBigInteger() : num
        if ((spec.exclusiveMinimum != null && value <= spec.exclusiveMinimum) ||
            (spec.minimum != null && value < spec.minimum) ||
            (spec.maximum != null && value > spec.maximum)) {
            error("${where} ${why ?: 'is out of range'}, got '${raw}'")
        }
    } else if (spec.type == 'boolean') {
        if (!(raw.toLowerCase() in ['true', 'false'])) { error("${where} ${why ?: 'must be true or false'}, got '${raw}'") }
        value = raw.toLowerCase() == 'true'
    }
    if (spec.pattern && !(raw ==~ spec.pattern)) { error("${where} ${why ?: "must match ${spec.pattern}"}") }
    if (spec['enum'] && !spec['enum'].any { option -> option.toString() == value.toString() }) {  // (JSON numbers vs BigInteger)
        error("${where} ${why ?: "must be one of ${spec['enum'].join(', ')}"}, got '${raw}'")
    }
    if (spec.format in ['file-path', 'directory-path']) {
        def p = raw.startsWith('/') || raw.contains('://') ? file(raw) : base.resolve(raw)
        if (spec.exists && !p.exists()) {
            def tilde = raw.startsWith('~') ? " ('~' is not expanded in a samplesheet: give the full path)" : ''
            error("${where}: path does not exist: ${p}${tilde}")
        }
        if (spec.format == 'directory-path' && p.exists() && !p.isDirectory()) { error("${where}: not a folder: ${p}") }
        if (spec.format == 'file-path' && p.isDirectory()) { error("${where}: is a folder, expected a file: ${p}") }
        value = p
    }
    return value
}

/*
 * The schema's rules across rows: uniqueEntries, and x-same-in-joint-model (sections fitted in one joint
 * model share the value). Reported on the first row that breaks the rule.
 */
def checkAcrossRows(String path, Map schema, List rows, String mappingMode) {
    def unique = schema.uniqueEntries ?: []
    def seen = [:]
    rows.each { meta, _input, n ->
        def key = unique.collect { col -> meta[schema.items.properties[col].meta?.getAt(0) ?: col] }
        if (seen.containsKey(key)) {
            error("Samplesheet ${path}, row ${n}, sample '${meta.id}': field '${unique.join("', '")}' is duplicated (also row ${seen[key]})")
        }
        seen[key] = n
    }
    // ids that differ only by case name outputs that overwrite each other on a case-insensitive file system
    def folded = [:]
    rows.each { meta, _input, n ->
        def id = "${meta.id}".toLowerCase()
        if (folded.containsKey(id) && folded[id][1] != meta.id) {
            error("Samplesheet ${path}, row ${n}, sample '${meta.id}': field 'sample' differs only by case from row " +
                  "${folded[id][0]} ('${folded[id][1]}'): outputs are named after it and would overwrite each other on a " +
                  "case-insensitive file system (macOS, Windows)")
        }
        folded[id] = [n, meta.id]
    }
    if (mappingMode != 'joint') { return }
    schema.items.properties.each { col, spec ->
        if (!spec.'x-same-in-joint-model') { return }
        def key = spec.meta?.getAt(0) ?: col
        def first = rows[0]
        rows.each { meta, _input, n ->
            if (meta[key] != first[0][key]) {
                def listing = rows.collect { m, _p, _r -> "${m.id}=${m[key]}" }.join(', ')
                error("Samplesheet ${path}, row ${n}, sample '${meta.id}': field '${col}' must be the same in every row " +
                      "when the sections are mapped in one joint model (${listing}); use --mapping_mode per_sample " +
                      "to give each section its own")
            }
        }
    }
}

/*
 * Two rows, two ids, one section (the same Space Ranger folder or h5ad file): the joint model would fit the same
 * spots twice. Checked after the schema's rules, so that their messages come first.
 */
def checkSameSection(String path, List rows) {
    // two ids for one section: the joint model would fit the same spots twice (a folder and its outs/ count as one)
    def sources = [:]
    rows.each { meta, input, n ->
        if (input == null) { return }
        def real = input.toUri().scheme == 'file' && input.exists() ? input.toRealPath() : input
        if (real.name == 'outs' && input.isDirectory()) { real = real.parent }
        def first = sources[real.toString()]
        if (first) {
            error("Samplesheet ${path}, row ${n}, sample '${meta.id}': field '${meta.input_type}' is the same section as " +
                  "row ${first[1]} (sample '${first[0]}'): ${input}; each section must be listed once")
        }
        sources[real.toString()] = [meta.id, n]
    }
}

/*
 * The cache key of a section folder (issue 31), so that -resume reruns READ_VISIUM (and all after it) when any
 * file in it changed: SHA-256 over every file's relative path, size and modification time, plus the content of
 * the files of at most 1 MiB (positions, scale factors: an edit that keeps size and time is still seen). Large
 * files (count matrices, images) are never read. Symbolic links are followed, as when the folder is staged.
 */
def folderFingerprint(dir) {
    def limit = 1024 * 1024
    def entries = []
    dir.eachFileRecurse(groovy.io.FileType.FILES) { f -> entries << f }
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    def local = dir.toUri().scheme == 'file'
    entries.collect { f -> [dir.relativize(f).toString(), f] }.sort { a, b -> a[0] <=> b[0] }.each { rel, f ->
        def size = f.size()
        def time = java.nio.file.Files.getLastModifiedTime(f).toString()
        digest.update("${rel}\u0000${size}\u0000${time}\u0000".toString().getBytes('UTF-8'))
        if (local && size <= limit) { digest.update(f.bytes) }
    }
    return "${entries.size()} files: " + new BigInteger(1, digest.digest()).toString(16).padLeft(64, '0')
}

/*
 * CSV text as RFC 4180 has it: a field in double quotes may hold commas, line breaks and "" for a quote.
 * Unquoted fields are trimmed, quoted ones kept as written; blank lines are skipped. Returns
 * [records: [[field, ...], ...], error: null or what is wrong, with its line].
 */
def parseCsv(String text) {
    def st = [records: [], fields: [], field: new StringBuilder(), quoted: false, inQuotes: false, closed: false,
              line: 1, opened: 0, wasQuoted: false, error: null]
    def endField = {
        st.fields << (st.quoted ? st.field.toString() : st.field.toString().trim())
        st.field = new StringBuilder()
        st.quoted = false
        st.closed = false
    }
    def endRecord = {
        endField.call()
        if (!(st.fields.size() == 1 && st.fields[0] == '' && !st.wasQuoted)) { st.records << st.fields }
        st.fields = []
        st.wasQuoted = false
    }
    text.each { ch ->
        if (st.error) { return }
        if (ch == '\n') { st.line += 1 }
        if (st.inQuotes) {
            if (ch == '"') { st.inQuotes = false; st.closed = true } else { st.field.append(ch) }
        } else if (ch == '"') {
            if (st.closed) {                          // "" inside quotes: one quote
                st.field.append('"'); st.inQuotes = true; st.closed = false
            } else if (!st.quoted && !st.field.toString().trim()) {
                st.field = new StringBuilder(); st.quoted = true; st.wasQuoted = true; st.inQuotes = true; st.opened = st.line
            } else {
                st.error = "line ${st.line}: a double quote inside a field that does not start with one " +
                           "(quote the whole field, and write a quote inside it as \"\")"
            }
        } else if (ch == ',') {
            endField.call()
        } else if (ch == '\n') {
            endRecord.call()
        } else if (ch != '\r') {
            if (st.closed && ch.trim()) {
                st.error = "line ${st.line}: text after the closing quote of a field (quote the whole field)"
            } else if (!st.closed) {
                st.field.append(ch)
            }
        }
    }
    if (!st.error && st.inQuotes) { st.error = "a double quote opened on line ${st.opened} is never closed" }
    if (!st.error) { endRecord.call() }
    return [records: st.records, error: st.error]
}
