/**
 * The source bundle contract: a directory holding `Dockerfile` and `model/`
 * with `requirements.txt` and an executable `train`.
 */
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { KaosError } from "./errors.js";

export interface SourceBundle {
  dir: string;
  dockerfile: string;
  requirements: string;
  train: string;
  /** `X.Y` from a `FROM python:X.Y...` line, when the Dockerfile names one. */
  pythonVersion: string | undefined;
}

function kind(path: string): "file" | "dir" | "missing" | "other" {
  try {
    const stat = statSync(path);
    if (stat.isFile()) return "file";
    if (stat.isDirectory()) return "dir";
    return "other";
  } catch {
    return "missing";
  }
}

/** The Python version a Dockerfile's first `FROM python:X.Y` names. */
export function pythonVersionOf(dockerfile: string): string | undefined {
  for (const line of dockerfile.split(/\r?\n/)) {
    const match = /^\s*FROM\s+(?:--platform=\S+\s+)?(?:\S+\/)?python:(\d+)\.(\d+)/i.exec(line);
    if (match) return `${match[1]}.${match[2]}`;
  }
  return undefined;
}

/**
 * Checks every piece of the contract and reports all missing pieces at once;
 * `where` names the config key that points at the bundle.
 */
export function validateSourceBundle(dir: string, where: string): SourceBundle {
  const dockerfile = join(dir, "Dockerfile");
  const model = join(dir, "model");
  const requirements = join(model, "requirements.txt");
  const train = join(model, "train");
  const missing: string[] = [];
  if (kind(dir) !== "dir") {
    throw new KaosError("BUNDLE_INVALID", `${where}: ${dir} is not a directory; expected a source bundle (Dockerfile and model/)`);
  }
  if (kind(dockerfile) !== "file") missing.push(`${dockerfile}: missing; expected the Dockerfile that builds the training image`);
  if (kind(model) !== "dir") {
    missing.push(`${model}/: missing; expected a model/ directory with requirements.txt and an executable train`);
  } else {
    if (kind(requirements) !== "file") missing.push(`${requirements}: missing; expected the Python requirements (may be empty)`);
    if (kind(train) !== "file") {
      missing.push(`${train}: missing; expected the executable training script`);
    } else {
      try {
        accessSync(train, constants.X_OK);
        if ((statSync(train).mode & 0o111) === 0) throw new Error("not executable");
      } catch {
        missing.push(`${train}: not executable; run \`chmod +x ${train}\``);
      }
    }
  }
  if (missing.length > 0) {
    throw new KaosError("BUNDLE_INVALID", `${where}: invalid source bundle ${dir}\n${missing.join("\n")}`);
  }
  const dockerText = readFileSync(dockerfile, "utf8");
  return { dir, dockerfile, requirements, train, pythonVersion: pythonVersionOf(dockerText) };
}
