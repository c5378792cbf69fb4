#!/usr/bin/env bash
# make lint's strict-syntax check: Nextflow's strict parser (nf-lang 25.04.0, the parser that Nextflow >= 26.04
# runs by default) over the pipeline's .nf and .config files, one line per problem (FILE:LINE:COLUMN: ...).
#   assets/nf-lang/lint.sh [--root DIR] [FILE...]
# With no FILE: every .nf and .config file under DIR (default: the repository), except work/, .venv*/, results*/,
# testdata_build/ and nf-test.config (nf-test's own file, not read by Nextflow).
# The parser and its dependencies come from Maven Central (pom.xml beside this file) into NF_LANG_HOME
# (default <repo>/.venv/nf-lang; resolved once, then reused); lib/*.groovy is compiled there too, so that
# scripts may name the pipeline's lib classes as Nextflow lets them. Needs java >= 17 and mvn (first run only).
# Exit status: 0 clean, 1 errors (or future errors), 2 the check itself could not run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=$repo
if [[ ${1:-} == --root ]]; then root=$(cd "$2" && pwd); shift 2; fi
die() { echo "lint: ERROR: $*" >&2; exit 2; }

home=${NF_LANG_HOME:-$repo/.venv/nf-lang}
stamp=$home/lib-$( (sha256sum "$here/pom.xml" 2>/dev/null || shasum -a 256 "$here/pom.xml") | cut -c1-16)
if [[ ! -s $stamp/classpath ]]; then
  command -v mvn >/dev/null 2>&1 || die "Maven ('mvn') not found; it is needed once to fetch nf-lang (e.g. 'apt-get install maven')."
  echo "lint: resolving nf-lang from Maven Central into $stamp (once)" >&2
  rm -rf "$home" && mkdir -p "$stamp"
  mvn_args=(-B -ntp -Dstyle.color=never -f "$here/pom.xml" -DincludeScope=runtime)
  [[ -n ${MAVEN_REPO_LOCAL:-} ]] && mvn_args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
  mvn "${mvn_args[@]}" dependency:copy-dependencies -DoutputDirectory="$stamp/jars" >"$home/mvn.log" 2>&1 \
    || { cat "$home/mvn.log" >&2; die "mvn could not resolve nf-lang (log above)"; }
  (cd "$stamp/jars" && ls -- *.jar) | sed "s|^|$stamp/jars/|" | paste -sd: - >"$stamp/classpath.tmp"
  mv "$stamp/classpath.tmp" "$stamp/classpath"
fi
cp=$(cat "$stamp/classpath")

# the pipeline's lib/ classes, compiled (Nextflow puts lib/ on the scripts' class path)
if compgen -G "$root/lib/*.groovy" >/dev/null; then
  classes=$(mktemp -d)
  trap 'rm -rf "$classes"' EXIT
  java -cp "$cp" org.codehaus.groovy.tools.FileSystemCompiler -d "$classes" "$root"/lib/*.groovy >"$classes.log" 2>&1 \
    || { cat "$classes.log" >&2; rm -f "$classes.log"; die "lib/*.groovy does not compile (above)"; }
  rm -f "$classes.log"
  cp=$classes:$cp
fi

cd "$root"
if (( $# == 0 )); then
  mapfile -t files < <(find . \( -name work -o -name '.venv*' -o -name 'results*' -o -name testdata_build -o -name .git \
                                 -o -name .nextflow -o -name .nf-test \) -prune \
                         -o \( -name '*.nf' -o -name '*.config' \) ! -name nf-test.config -print | sed 's|^\./||' | sort)
  (( ${#files[@]} )) || die "no .nf or .config files under $root"
else
  files=("$@")
fi
version=$(tr ':' '\n' <<<"$cp" | sed -n 's|.*/nf-lang-\(.*\)\.jar$|\1|p')
exec java -Dnflang.version="$version" -cp "$cp" "$here/StrictLint.java" "${files[@]}"
