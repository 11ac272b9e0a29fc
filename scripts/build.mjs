// Builds dist/: type declarations from tsc (which also type-checks), and the
// JavaScript from esbuild as a few ES modules with shared chunks.
//
// Why bundle: every command starts by loading its modules, and zod alone is
// some 95 files. Resolving, reading and compiling each one cost a quarter of a
// `kaos plan` on a small project; one file per entry point and shared chunk
// cost less than half of that.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

/**
 * Entry points and chunks sit flat in dist/, because code finds some modules
 * by URL relative to itself, from whichever chunk it ended up in: the hashing
 * thread (hash-worker.js), the config thread (config-worker.js), the module a
 * config's `import "kaos-ml"` resolves to (define.js), the Pulumi provider
 * implementation (provider-impl.js), and the transfer threads, which load the very chunk that holds the ingest code.
 * The rest are the package's own entry and the modules the benchmarks drive.
 *
 * The two sets are built apart. esbuild puts the modules reached from each
 * distinct set of entries in a chunk of their own, so every entry the command
 * line never loads would cut the modules it does load into more files, each
 * one more to read at every start. The library's entries get their own chunks
 * (lib-*.js); nothing they hold keeps state a command line module shares.
 */
const CLI_ENTRIES = [
  "src/cli/cli.ts",
  "src/define.ts",
  "src/core/hash-worker.ts",
  "src/backends/local/ingest.ts",
  "src/backends/kubernetes/provider-impl.ts",
];
const LIBRARY_ENTRIES = ["src/index.ts", "src/core/hash.ts", "src/core/state.ts", "src/core/manifest.ts", "src/core/objects.ts"];
const CONFIG_WORKER_ENTRY = "src/core/config-worker.ts";
const ENTRIES = [...CLI_ENTRIES, ...LIBRARY_ENTRIES, CONFIG_WORKER_ENTRY];

/**
 * Node's built-in modules, reached through require() rather than ES imports.
 * An ES import of a built-in builds a module facade that reads every export
 * once, and reading some of them loads more: `fs.promises` and `fs.ReadStream`
 * bring in the streams, `fs/promises` and readline, `crypto.webcrypto` the Web
 * Crypto API. That was a good part of what starting any command cost. Through
 * require(), only the names a module imports are read. The import statements
 * of kaos's own sources (and commander's) are rewritten in place, line for
 * line (so the source maps still match); dynamic imports stay imports.
 */
const BUILTIN_IMPORT = /^import\s+(\{[^}]*\}|\*\s+as\s+[\w$]+|[\w$]+)\s+from\s+["'](node:[^"']+)["'];/gm;

/**
 * Built-ins loaded only when first used. child_process loads net, dgram and
 * the streams, and most commands never start a process (commander imports it
 * for subcommands kaos does not have); fs/promises is needed only by the
 * commands that read a log, hash a single file or talk to a cluster; v8 only
 * once heavy work is ahead (core/heap.ts). Their imports must be functions, or
 * a namespace used as `name.fn(...)`.
 */
const LAZY_BUILTINS = new Set(["node:child_process", "node:fs/promises", "node:v8"]);

/** `{ a, type B, c as d }` as `[["a", "a"], ["c", "d"]]`: each imported name and its local name. */
function importedNames(clause) {
  return clause
    .slice(1, -1)
    .split(",")
    .map((name) => name.trim())
    .filter((name) => name !== "" && !name.startsWith("type "))
    .map((name) => {
      const [imported, local = imported] = name.split(/\s+as\s+/);
      return [imported, local];
    });
}

/** The statement that replaces `import CLAUSE from "ID"`, on as many lines. */
function builtinBinding(clause, id) {
  const lineBreaks = "\n".repeat((clause.match(/\n/g) ?? []).length);
  const module = `globalThis.process.getBuiltinModule(${JSON.stringify(id)})`;
  if (!clause.startsWith("{")) {
    const local = clause.replace(/^\*\s+as\s+/, "");
    if (!LAZY_BUILTINS.has(id)) return `const ${local} = ${module};`;
    return `const ${local} = new Proxy({}, { get: (_, name) => ${module}[name] });`;
  }
  const names = importedNames(clause);
  if (!LAZY_BUILTINS.has(id))
    return `const { ${names.map(([imported, local]) => (imported === local ? local : `${imported}: ${local}`)).join(", ")} } = ${module};${lineBreaks}`;
  // A forwarding function, which also forwards util.promisify's variant (execFile has one).
  const custom = 'Symbol.for("nodejs.util.promisify.custom")';
  const forwarders = names.map(
    ([imported, local]) =>
      `const ${local} = Object.defineProperty((...args) => ${module}.${imported}(...args), ${custom}, { get: () => ${module}.${imported}[${custom}] });`,
  );
  return `${forwarders.join(" ")}${lineBreaks}`;
}

const builtinsThroughRequire = {
  name: "builtins-through-require",
  setup(build) {
    // kaos's sources, and commander's: it is loaded by every command.
    build.onLoad({ filter: /[\\/](src[\\/].*\.ts|node_modules[\\/]commander[\\/].*\.js)$/ }, (args) => {
      const source = readFileSync(args.path, "utf8");
      const contents = source.replace(BUILTIN_IMPORT, (_statement, clause, id) => builtinBinding(clause, id));
      return { contents, loader: args.path.endsWith(".ts") ? "ts" : "js" };
    });
  },
};

// Built beside dist/ and moved in file by file, so that a kaos started while a
// build runs (a test suite rebuilding, say) never finds dist/ missing.
const dist = join(root, "dist");
const next = join(root, `dist.next-${process.pid}`);
rmSync(next, { recursive: true, force: true });

execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", "tsconfig.json", "--emitDeclarationOnly", "--outDir", next], {
  cwd: root,
  stdio: "inherit",
});

const esm = {
  absWorkingDir: root,
  outdir: next,
  entryNames: "[name]",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node22",
  sourcemap: true,
  // What is not a dependency is compiled in: zod, commander and picocolors are
  // small, always loaded and many files each, so they are devDependencies that an
  // install of the package does not fetch.
  external: [...Object.keys(pkg.dependencies), ...Object.keys(pkg.peerDependencies)],
  // CommonJS dependencies compiled in (commander, picocolors) call require(), which an ES module lacks, and so do
  // the built-in modules above. Built-ins come straight from the process; anything else through a require made
  // only when asked, since making one per chunk costs time at every start.
  banner: {
    js: 'const require = (id) => process.getBuiltinModule(id) ?? process.getBuiltinModule("node:module").createRequire(import.meta.url)(id);',
  },
  plugins: [builtinsThroughRequire],
  // The version every start would otherwise read from package.json (core/layout.ts).
  define: { KAOS_PACKAGE_VERSION: JSON.stringify(pkg.version) },
  logLevel: "warning",
};
await build({ ...esm, entryPoints: CLI_ENTRIES, chunkNames: "chunk-[hash]" });
await build({ ...esm, entryPoints: LIBRARY_ENTRIES, chunkNames: "lib-[hash]" });
// The thread `kaos watch` and `kaos ui` evaluate the config in (core/config.ts),
// found beside the chunk that starts it. Built whole, on its own, so that the
// command line's chunks stay as they are: only a command that reloads its config loads it.
await build({ ...esm, entryPoints: [CONFIG_WORKER_ENTRY], splitting: false });

// The dashboard of `kaos ui`: its page, and its client bundled with uPlot for
// the browser, in dist/ui/, found relative to the module that serves them.
mkdirSync(join(next, "ui"), { recursive: true });
await build({
  absWorkingDir: root,
  entryPoints: ["src/ui/client/main.ts"],
  outfile: join(next, "ui", "app.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "es2022",
  minify: true,
  // uPlot's notice is an ordinary comment, which minifying drops: its licence ships beside the bundle.
  banner: { js: "/*! includes uPlot, MIT licensed, copyright Leon Sorokin: see uPlot.LICENSE */" },
  logLevel: "warning",
});
writeFileSync(join(next, "ui", "uPlot.LICENSE"), readFileSync(require.resolve("uplot/LICENSE")));
writeFileSync(
  join(next, "ui", "app.css"),
  `${readFileSync(require.resolve("uplot/dist/uPlot.min.css"), "utf8")}\n${readFileSync(join(root, "src/ui/client/app.css"), "utf8")}`,
);
writeFileSync(join(next, "ui", "index.html"), readFileSync(join(root, "src/ui/client/index.html")));

// Pulumi state written by earlier builds names the provider implementation by
// its old place (the forwarding provider's import URL is serialized into it):
// deleting those resources must still find it.
mkdirSync(join(next, "backends/kubernetes"), { recursive: true });
writeFileSync(join(next, "backends/kubernetes/provider-impl.js"), 'export * from "../../provider-impl.js";\n');

// `node_modules/.bin/kaos` and `./dist/cli.js` both run.
chmodSync(join(next, "cli.js"), 0o755);

/** Every file under `dir`, as paths relative to it. */
function filesUnder(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => !entry.isDirectory())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)));
}

const built = filesUnder(next);
const entryFiles = new Set(
  ENTRIES.map(
    (entry) =>
      `${entry
        .replace(/^src\//, "")
        .replace(/^.*\//, "")
        .replace(/\.ts$/, "")}.js`,
  ),
);
// Chunks first, then the entries that import them, so each entry moved in finds its chunks already there.
const ordered = [...built.filter((file) => !entryFiles.has(file)), ...built.filter((file) => entryFiles.has(file))];
for (const file of ordered) {
  mkdirSync(dirname(join(dist, file)), { recursive: true });
  renameSync(join(next, file), join(dist, file));
}
const current = new Set(built);
for (const file of filesUnder(dist)) if (!current.has(file)) rmSync(join(dist, file));
rmSync(next, { recursive: true, force: true });
