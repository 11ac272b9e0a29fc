/**
 * Pulumi dynamic resources for Pachyderm: repos, bundle commits and
 * pipelines, created and updated through pachd's API.
 *
 * Pulumi serializes a dynamic provider's functions (their source text and
 * whatever they capture) into the state and runs them in a separate Node
 * process. So the providers here are deliberately thin and self-contained:
 * they capture one string, the URL of `provider-impl.js`, and import it at
 * run time for the real work. `diff` needs no import at all: it compares the
 * resource's identifying inputs (a spec's canonical JSON, a bundle's content
 * key), so an unchanged pipeline or bundle is `same` to Pulumi and nothing is
 * sent to pachd.
 *
 * No secret is an input: inputs land in the state. The provider process
 * reads the Pachyderm token from the environment variable named by
 * `tokenEnv` (kaos passes it to the Pulumi CLI, which hands its environment
 * to the provider process).
 */
import * as pulumi from "@pulumi/pulumi";

/**
 * How to reach pachd; identical on every resource. Not compared by `diff`:
 * the address says how to reach pachd, not which one, so deletes and
 * refreshes use the current run's address (KAOS_PACHD_ADDRESS), not the one
 * in the state.
 */
export interface PachdConnection {
  address: string;
  project: string;
  /** Name (never the value) of the variable holding the token. */
  tokenEnv: string;
}

export interface RepoInputs extends PachdConnection {
  name: string;
  description: string;
}

/** Where a bundle's bytes come from; read by the provider at create/update time. */
export type BundleSource =
  | { kind: "archive"; dir: string; files: { path: string; mode: "file" | "exec" | "symlink" }[] | null; path: string }
  | { kind: "files"; dir: string }
  | { kind: "params"; files: { path: string; content: string }[] };

export interface BundleInputs extends PachdConnection {
  repo: string;
  /** Content key: the only thing `diff` compares, so the bytes are pushed only when it changes. */
  key: string;
  source: BundleSource;
}

export interface PipelineInputs extends PachdConnection {
  name: string;
  /** The CreatePipelineRequest as canonical JSON. */
  spec: string;
}

type Kind = "repo" | "bundle" | "pipeline";

/**
 * A provider that forwards create/update/delete to `provider-impl` and
 * decides `diff` itself. `compared` are the inputs whose change is an update;
 * `replacing` those whose change needs a new resource.
 */
function forwardingProvider(implUrl: string, kind: Kind, compared: string[], replacing: string[]): pulumi.dynamic.ResourceProvider {
  // Everything below runs in Pulumi's provider process as serialized source
  // text: refer only to the captured values above and to globals.
  const load = async (): Promise<pulumi.dynamic.ResourceProvider> => {
    // `new Function` keeps the import a native one: bundlers and test runners
    // rewrite `import()` calls into helpers that would be captured here.
    const importModule = new Function("url", "return import(url)") as (url: string) => Promise<Record<string, unknown>>;
    const loaded = await importModule(implUrl);
    // A loader that transpiles TypeScript may hand the exports over as `default`.
    const found = (loaded["providerImpl"] ? loaded : loaded["default"]) as
      | { providerImpl?: Record<Kind, pulumi.dynamic.ResourceProvider> }
      | undefined;
    const impl = found?.providerImpl?.[kind];
    if (!impl) throw new Error(`kaos: ${implUrl} has no provider for ${kind}`);
    return impl;
  };
  return {
    async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
      const differs = (key: string) => JSON.stringify(olds[key]) !== JSON.stringify(news[key]);
      const replaces = replacing.filter(differs);
      return { changes: compared.some(differs) || replaces.length > 0, replaces };
    },
    async create(inputs: Record<string, unknown>) {
      const impl = await load();
      return impl.create(inputs);
    },
    async update(id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
      const impl = await load();
      return impl.update ? impl.update(id, olds, news) : {};
    },
    async delete(id: string, props: Record<string, unknown>) {
      const impl = await load();
      if (impl.delete) await impl.delete(id, props);
    },
    async read(id: string, props: Record<string, unknown>) {
      const impl = await load();
      return impl.read ? impl.read(id, props) : { id, props };
    },
  };
}

export interface PachydermProviders {
  repo: pulumi.dynamic.ResourceProvider;
  bundle: pulumi.dynamic.ResourceProvider;
  pipeline: pulumi.dynamic.ResourceProvider;
}

/** The three providers, forwarding to the module at `implUrl` (a file: URL of provider-impl.js). */
export function pachydermProviders(implUrl: string): PachydermProviders {
  return {
    repo: forwardingProvider(implUrl, "repo", ["description"], ["name", "project"]),
    bundle: forwardingProvider(implUrl, "bundle", ["key"], ["repo", "project"]),
    pipeline: forwardingProvider(implUrl, "pipeline", ["spec"], ["name", "project"]),
  };
}

/** Where provider-impl lives beside this module (compiled .js, or .ts when run from source). */
export function defaultImplUrl(): string {
  const here = import.meta.url;
  const extension = here.endsWith(".ts") ? ".ts" : ".js";
  return new URL(`./provider-impl${extension}`, here).href;
}

export class PachydermRepo extends pulumi.dynamic.Resource {
  constructor(name: string, args: RepoInputs, provider: pulumi.dynamic.ResourceProvider, opts?: pulumi.CustomResourceOptions) {
    super(provider, name, { ...args }, opts, "pachyderm", "Repo");
  }
}

export class PachydermBundle extends pulumi.dynamic.Resource {
  declare readonly commit: pulumi.Output<string>;

  constructor(name: string, args: BundleInputs, provider: pulumi.dynamic.ResourceProvider, opts?: pulumi.CustomResourceOptions) {
    super(provider, name, { ...args, commit: undefined }, opts, "pachyderm", "Bundle");
  }
}

export class PachydermPipeline extends pulumi.dynamic.Resource {
  constructor(name: string, args: PipelineInputs, provider: pulumi.dynamic.ResourceProvider, opts?: pulumi.CustomResourceOptions) {
    super(provider, name, { ...args }, opts, "pachyderm", "Pipeline");
  }
}
