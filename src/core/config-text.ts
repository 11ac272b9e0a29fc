/**
 * What the config loader and its validator share without the validator
 * itself: names, sizes, and where in a config file a key is written.
 */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
/**
 * What joins two lowercase runs of letters and digits in a path component of
 * an image repository, as the OCI distribution spec and Docker's reference
 * grammar write it: `.`, `_`, `__` or dashes.
 */
export const IMAGE_SEPARATOR = "(?:[._]|__|-+)";
/** One path component of an image repository: lowercase runs of letters and digits joined by separators. */
export const IMAGE_PATH_COMPONENT = `[a-z0-9]+(?:${IMAGE_SEPARATOR}[a-z0-9]+)*`;
const DOMAIN_COMPONENT = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?";
const PORT = "(?::[0-9]+)?";
/** Docker reads a first segment as a registry host only when it has a `.` or a port, or is `localhost`. */
const REGISTRY_HOST = `(?:localhost${PORT}|${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})+${PORT}|${DOMAIN_COMPONENT}:[0-9]+|\\[[A-Fa-f0-9:]+\\]${PORT})`;
/**
 * The registry prefix of image references (`registry.url` of a stack): a
 * registry host and any path components, or path components alone (Docker
 * Hub), with no scheme and no tag.
 */
export const IMAGE_REGISTRY_PATTERN = new RegExp(`^(?:${REGISTRY_HOST}|${IMAGE_PATH_COMPONENT})(?:/${IMAGE_PATH_COMPONENT})*/*$`);
const MEMORY_PATTERN = /^(\d+(?:\.\d+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$/;
const MEMORY_FACTORS: Record<string, number> = {
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** Bytes of a Kubernetes-style quantity such as `512M` or `2Gi`; undefined when it is not one. */
export function parseMemory(value: string): number | undefined {
  const match = MEMORY_PATTERN.exec(value);
  if (!match) return undefined;
  const [, amount, suffix] = match;
  const factor = MEMORY_FACTORS[suffix ?? ""];
  if (amount === undefined || factor === undefined) return undefined;
  return Math.round(Number(amount) * factor);
}

export type PathKey = PropertyKey;

/**
 * Best effort: the line of `file` where the last key of `path` is written,
 * found by looking for each key in turn after the previous one.
 */
export function locateKey(source: string, path: readonly PathKey[]): number | undefined {
  let offset = 0;
  let found = false;
  for (const key of path) {
    if (typeof key !== "string") continue;
    const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`(?:^|[\\s{,])(?:${escaped}|"${escaped}"|'${escaped}')\\s*:`, "g");
    pattern.lastIndex = offset;
    const match = pattern.exec(source);
    if (!match) break;
    offset = match.index + match[0].length;
    found = true;
  }
  if (!found) return undefined;
  return source.slice(0, offset).split("\n").length;
}

export function formatPath(path: readonly PathKey[]): string {
  return path.map((key) => String(key)).join(".");
}

export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  // JSON has no words for these: a bigint would read as the number it is not, a function as its whole source.
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (typeof value === "symbol") return String(value);
  // JSON writes these as null, which the code did not say.
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    text = undefined;
  }
  text ??= String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

export function valueAt(root: unknown, path: readonly PathKey[]): unknown {
  let current = root;
  for (const key of path) {
    if (typeof current !== "object" || current === null) return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

/** Where in `file` a key path is: `file:line` when the line can be found, else the file. */
export function position(file: string, source: string | undefined, path: readonly PathKey[]): string {
  const line = source === undefined ? undefined : locateKey(source, path);
  return line === undefined ? file : `${file}:${line}`;
}
