import { KaosError } from "./errors.js";

export async function watch(_options: { cwd: string; configPath?: string | undefined; stackName?: string | undefined }): Promise<number> {
  throw new KaosError("NOT_SUPPORTED", "`kaos watch` is not available in this build");
}
