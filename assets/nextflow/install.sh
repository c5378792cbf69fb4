#!/usr/bin/env bash
# Installs Nextflow into a virtual environment without the usual installer (get.nextflow.io / GitHub,
# which the machines this project is built on cannot reach):
#   1. resolves io.nextflow:nextflow and its dependencies from Maven Central with `mvn` (pom.xml beside
#      this file says which version and why) into VENV/nextflow/lib/, via the local Maven repository
#      (~/.m2/repository unless MAVEN_REPO_LOCAL is set), which caches them for later installs;
#   2. writes VENV/bin/nextflow, a launcher that starts those jars with the JVM flags of the official
#      `nextflow` launcher script (24.10.x).
#
# Usage: assets/nextflow/install.sh [VENV_DIR]     (default: .venv in the repository root)
# Needs: java >= 17 (JAVA_HOME / NXF_JAVA_HOME honoured), mvn (Maven >= 3.6).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${1:-$root/.venv}

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }

# --- Java >= 17 -------------------------------------------------------------------------------------
# Same lookup as the launcher: NXF_JAVA_HOME, then JAVA_HOME, then `java` on PATH.
java_home=${NXF_JAVA_HOME:-${JAVA_HOME:-}}
if [[ -n $java_home && -x $java_home/bin/java ]]; then java_cmd=$java_home/bin/java
else java_cmd=$(command -v java) \
  || die "Java not found. Nextflow needs Java 17 or later: install a JDK (e.g. 'apt-get install openjdk-17-jre-headless') or set JAVA_HOME."
fi
java_ver=$("$java_cmd" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
java_major=${java_ver%%.*}
[[ $java_major == 1 ]] && { java_major=${java_ver#1.}; java_major=${java_major%%.*}; }
[[ $java_major =~ ^[0-9]+$ ]] || die "cannot read the Java version from '$java_cmd -version' (got '$java_ver')."
(( java_major >= 17 )) \
  || die "Java $java_ver found at $java_cmd; Nextflow here needs Java 17 or later. Install a newer JDK or point JAVA_HOME at one."
(( java_major <= 23 )) \
  || echo "install.sh: WARNING: Java $java_ver is newer than Nextflow 24.10 was tested with (17-23)." >&2

# --- resolve the jars -------------------------------------------------------------------------------
command -v mvn >/dev/null 2>&1 \
  || die "Maven ('mvn') not found; it is needed once to fetch the Nextflow jars (e.g. 'apt-get install maven')."
mvn_args=(-B -ntp -Dstyle.color=never -f "$here/pom.xml" -DincludeScope=runtime)
[[ -n ${MAVEN_REPO_LOCAL:-} ]] && mvn_args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")

mkdir -p "$venv/bin"
venv=$(cd "$venv" && pwd)
dest=$venv/nextflow
tmp=$venv/nextflow.tmp.$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp/lib"
echo "install.sh: resolving Nextflow $(sed -n 's:.*<nextflow.version>\(.*\)</nextflow.version>.*:\1:p' "$here/pom.xml") from Maven Central (cached in ${MAVEN_REPO_LOCAL:-~/.m2/repository})" >&2
# Maven's log is kept aside and shown only when it fails.
mvn_log=$venv/nextflow-mvn.log
mvn "${mvn_args[@]}" dependency:copy-dependencies -DoutputDirectory="$tmp/lib" >"$mvn_log" 2>&1 \
  || { cat "$mvn_log" >&2; die "mvn could not resolve the Nextflow jars (log above, also in $mvn_log)."; }
# The class path in Maven's resolution order (deterministic), one jar per line, relative to $dest.
mvn "${mvn_args[@]}" dependency:build-classpath -Dmdep.prefix=lib -Dmdep.outputFile="$tmp/classpath.raw" >"$mvn_log" 2>&1 \
  || { cat "$mvn_log" >&2; die "mvn could not write the Nextflow class path (log above, also in $mvn_log)."; }
rm -f "$mvn_log"
tr ':' '\n' <"$tmp/classpath.raw" | sed '/^$/d' >"$tmp/classpath"
rm -f "$tmp/classpath.raw"
while IFS= read -r jar; do
  [[ -f $tmp/$jar ]] || die "class path names $jar, which Maven did not copy."
done <"$tmp/classpath"
grep -q '^lib/nextflow-[0-9][^/]*\.jar$' "$tmp/classpath" || die "no nextflow jar was resolved."

# --- the launcher -----------------------------------------------------------------------------------
cat >"$tmp/nextflow" <<'LAUNCHER'
#!/usr/bin/env bash
# Nextflow launcher written by assets/nextflow/install.sh (re-run `make setup` rather than editing it).
# Starts the Nextflow jars in ../nextflow/lib (resolved from Maven Central) with the JVM flags that the
# official `nextflow` launcher script (24.10.x) passes, and downloads nothing.
# Environment it reads: NXF_HOME (default: <venv>/nextflow-home), NXF_OFFLINE (default: true),
# NXF_OPTS, NXF_JVM_ARGS, NXF_JAVA_OPTS (extra JVM options), NXF_JAVA_HOME / JAVA_HOME, NXF_TEMP,
# NXF_CLI_OPTS, NXF_PID_FILE (with -bg).
set -o pipefail

die() { echo "nextflow: ERROR: $*" >&2; exit 1; }

# Where this script lives (following symlinks), so it works from any directory.
src=${BASH_SOURCE[0]}
while [[ -L $src ]]; do
  dir=$(cd -P "$(dirname "$src")" && pwd)
  src=$(readlink "$src")
  [[ $src == /* ]] || src=$dir/$src
done
venv=$(cd -P "$(dirname "$src")/.." && pwd)
nxf_dir=$venv/nextflow
[[ -s $nxf_dir/classpath ]] || die "$nxf_dir/classpath is missing; run 'make setup' again."

export NXF_HOME=${NXF_HOME:-$venv/nextflow-home}
export NXF_OFFLINE=${NXF_OFFLINE:-true}
export NXF_CLI="$0 $*"
# see https://github.com/nextflow-io/nextflow/issues/1716
unset JAVA_TOOL_OPTIONS

# Java (same lookup order as the official launcher), >= 17.
[[ -n ${NXF_JAVA_HOME:-} ]] && JAVA_HOME=$NXF_JAVA_HOME
if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then JAVA_CMD=$JAVA_HOME/bin/java
else JAVA_CMD=$(command -v java) || die "Java not found. Nextflow needs Java 17 or later: install a JDK or set JAVA_HOME."
fi
export JAVA_CMD
java_ver=$("$JAVA_CMD" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
java_major=${java_ver%%.*}
[[ $java_major == 1 ]] && { java_major=${java_ver#1.}; java_major=${java_major%%.*}; }
if [[ ! $java_major =~ ^[0-9]+$ ]] || (( java_major < 17 )); then
  die "Java ${java_ver:-?} at $JAVA_CMD is too old or unreadable; Nextflow here needs Java 17 or later (set JAVA_HOME)."
fi

args=("$@")
# shellcheck disable=SC2206  # NXF_CLI_OPTS holds several options separated by blanks, as upstream
[[ -n ${NXF_CLI_OPTS:-} ]] && args+=(${NXF_CLI_OPTS})

# The command (first word that is a Nextflow command), -D JVM properties before it, -bg.
commands=" clone config drop help history info ls pull run view node console kuberun "
cmd='' bg='' dprops=()
for a in "$@"; do
  case $a in
    -D*) [[ -z $cmd ]] && dprops+=("$a") ;;
    -bg) bg=1 ;;
    -self-update|self-update|-download)
      [[ -z $cmd ]] && die "this Nextflow was installed by 'make setup' from Maven Central; change its version in assets/nextflow/pom.xml and run 'make setup'." ;;
    -*) ;;
    *) [[ -z $cmd && $commands == *" $a "* ]] && cmd=$a ;;
  esac
done

jvm=(-Dfile.encoding=UTF-8 -Dcom.sun.security.enableAIAcaIssuers=true)
if [[ $cmd == console ]]; then bg=1; else jvm+=(-Djava.awt.headless=true); fi
# C1-only JIT starts faster; the official launcher keeps full JIT for long-running `run` and `node`.
[[ $cmd != run && $cmd != node ]] && jvm+=(-XX:+TieredCompilation -XX:TieredStopAtLevel=1)
# shellcheck disable=SC2206  # these variables hold several options separated by blanks, as upstream
[[ -n ${NXF_OPTS:-} ]] && jvm+=(${NXF_OPTS})
NXF_TEMP=${NXF_TEMP:-${TMPDIR:-}}
[[ -n $NXF_TEMP ]] && jvm+=("-Djava.io.tmpdir=$NXF_TEMP")
jvm+=("${dprops[@]}")
# shellcheck disable=SC2206
[[ -n ${NXF_JVM_ARGS:-} ]] && jvm+=(${NXF_JVM_ARGS})
# shellcheck disable=SC2206
[[ -n ${NXF_JAVA_OPTS:-} ]] && jvm+=(${NXF_JAVA_OPTS})
for pkg in java.lang java.io java.nio java.net java.util java.util.concurrent.locks \
           java.util.concurrent.atomic java.nio.file.spi sun.nio.ch sun.nio.fs \
           sun.net.www.protocol.http sun.net.www.protocol.https sun.net.www.protocol.ftp \
           sun.net.www.protocol.file jdk.internal.misc jdk.internal.vm java.util.regex; do
  jvm+=("--add-opens=java.base/$pkg=ALL-UNNAMED")
done

if [[ -z ${COLUMNS:-} ]] && tty -s 2>/dev/null; then COLUMNS=$(tput cols 2>/dev/null || true); fi
[[ -n ${COLUMNS:-} ]] && export COLUMNS

cp=''
while IFS= read -r jar; do cp+=${cp:+:}$nxf_dir/$jar; done <"$nxf_dir/classpath"

cmdline=("$JAVA_CMD" "${jvm[@]}" -cp "$cp" nextflow.cli.Launcher "${args[@]}")
if [[ -n $bg ]]; then
  "${cmdline[@]}" &
  pid=$!
  disown
  echo "$pid" >"${NXF_PID_FILE:-.nextflow.pid}"
  exit 0
fi
exec "${cmdline[@]}"
LAUNCHER
chmod +x "$tmp/nextflow"

# --- swap in and check ------------------------------------------------------------------------------
mv "$tmp/nextflow" "$venv/bin/nextflow.new"
rm -rf "$dest"
mv "$tmp" "$dest"
mv "$venv/bin/nextflow.new" "$venv/bin/nextflow"
trap - EXIT
version_out=$("$venv/bin/nextflow" -version) \
  || die "the installed launcher $venv/bin/nextflow does not start; see the errors above."
echo "install.sh: $(awk '/version/ {print "Nextflow", $2, "build", $4; exit}' <<<"$version_out") -> $venv/bin/nextflow" >&2
