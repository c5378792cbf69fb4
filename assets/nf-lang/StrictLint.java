/*
 * Runs Nextflow's strict-syntax parser (nf-lang: the parser of Nextflow >= 26.04) over .nf and .config files and
 * prints one line per problem:  FILE:LINE:COLUMN: error|warning: MESSAGE
 * Scripts are parsed together (so `include`s resolve), then analysed, as Nextflow does; config files likewise.
 * Exit status: 1 when any file has an error or a warning that says the construct "will not be supported in a
 * future version" / "is deprecated" (nf-lang's ParanoidWarning: a future error), else 0. Other warnings (e.g.
 * an unused closure parameter) are printed and do not fail.
 *
 * Usage (assets/nf-lang/lint.sh resolves the class path): java -cp CP StrictLint.java FILE...
 */
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import org.codehaus.groovy.control.SourceUnit;
import org.codehaus.groovy.control.messages.ExceptionMessage;
import org.codehaus.groovy.control.messages.Message;
import org.codehaus.groovy.control.messages.SyntaxErrorMessage;
import org.codehaus.groovy.control.messages.WarningMessage;
import org.codehaus.groovy.syntax.SyntaxException;

public class StrictLint {
    public static void main(String[] args) {
        if (args.length == 0) {
            System.err.println("usage: StrictLint FILE.nf|FILE.config ...");
            System.exit(2);
        }
        var scripts = new nextflow.script.control.ScriptParser();
        var configs = new nextflow.config.control.ConfigParser();
        List<SourceUnit> units = new ArrayList<>();
        for (String name : args) {
            File f = new File(name);
            if (!f.isFile()) {
                System.out.println(name + ":1:1: error: no such file");
                System.exit(1);
            }
            units.add(name.endsWith(".config") ? configs.parse(f) : scripts.parse(f));
        }
        scripts.analyze();
        configs.analyze();

        int errors = 0, futureErrors = 0, warnings = 0;
        for (SourceUnit unit : units) {
            String file = unit.getName();
            var collector = unit.getErrorCollector();
            boolean syntaxError = false;
            for (Message m : collector.getErrors() == null ? List.<Message>of() : collector.getErrors()) {
                if (m instanceof SyntaxErrorMessage sm) {
                    SyntaxException se = sm.getCause();
                    System.out.println(file + ":" + se.getStartLine() + ":" + se.getStartColumn() + ": error: " + se.getOriginalMessage());
                    syntaxError = true;
                    errors++;
                } else if (m instanceof ExceptionMessage em) {
                    // the parser's own exception behind a syntax error already reported: not a second error
                    if (syntaxError && em.getCause().getClass().getName().startsWith("org.antlr")) { continue; }
                    System.out.println(file + ":1:1: error: " + em.getCause());
                    errors++;
                } else {
                    System.out.println(file + ":1:1: error: " + m);
                    errors++;
                }
            }
            for (WarningMessage w : collector.getWarnings() == null ? List.<WarningMessage>of() : collector.getWarnings()) {
                var at = w.getContext();
                String where = at == null ? "1:1" : at.getStartLine() + ":" + at.getStartColumn();
                boolean future = w.getClass().getSimpleName().equals("ParanoidWarning");
                System.out.println(file + ":" + where + ": " + (future ? "error (future)" : "warning") + ": " + w.getMessage());
                if (future) { futureErrors++; } else { warnings++; }
            }
        }
        System.out.println("strict syntax (nf-lang " + System.getProperty("nflang.version", "?")
            + "): " + units.size() + " file(s), " + errors + " error(s), " + futureErrors + " future error(s), " + warnings + " warning(s)");
        System.exit(errors + futureErrors > 0 ? 1 : 0);
    }
}
