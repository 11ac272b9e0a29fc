/**
 * Validation of generated Pachyderm pipeline specs against Pachyderm's own
 * JSON schema for CreatePipelineRequest (v2.11.6, shipped beside this file,
 * byte-identical to the copy the tests read).
 *
 * The schema is generated from pps.proto as draft-04. Ajv 8 speaks draft-07
 * and later, so it is loaded with draft-04's meaning made explicit:
 *
 * - `$schema` is dropped: Ajv 8 bundles no draft-04 meta-schema, and every
 *   keyword the schema uses means the same in draft-07 except the next one.
 * - Keywords beside a `$ref` are dropped, because draft-04 ignores them while
 *   Ajv 8 applies them; applied, the `additionalProperties: false` that the
 *   generator writes beside every `$ref` would reject every field of every
 *   message (`pipeline.name` included). This also drops the `null` branches
 *   beside those refs, which only makes the check stricter: kaos never writes
 *   null.
 *
 * Ajv runs in strict mode except for two checks about how the schema is
 * written rather than what it accepts: `strictTypes` (the generator puts
 * `type` inside `oneOf` rather than beside `properties`) and
 * `strictRequired` (Egress names snake_case fields in a `required`). Every
 * message keeps `additionalProperties: false`, so an unknown key anywhere is
 * an error. The schema uses two formats, `regex` and `date-time`; both are
 * checked here (no formats package is installed).
 */
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import bundledSchema from "./CreatePipelineRequest.v2.11.6.schema.json" with { type: "json" };

type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface SpecValidation {
  valid: boolean;
  /** One line per problem: `<JSON pointer>: <message>`. */
  errors: string[];
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** Rewrites the draft-04 schema into the draft-07 form with the same meaning (see above). */
export function toDraft07(schema: unknown): unknown {
  function visit(node: unknown): unknown {
    if (Array.isArray(node)) return node.map(visit);
    if (node === null || typeof node !== "object") return node;
    const record = node as Record<string, unknown>;
    if ("$ref" in record) {
      const kept: Record<string, unknown> = { $ref: record["$ref"] };
      if (record["definitions"] !== undefined) kept["definitions"] = visit(record["definitions"]);
      return kept;
    }
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(record)) {
      if (key === "$schema") continue;
      out[key] = visit(value);
    }
    return out;
  }
  return visit(schema);
}

/** Compiles a CreatePipelineRequest schema (the bundled one by default). */
export function compileSpecSchema(schema: unknown = bundledSchema): ValidateFunction {
  const ajv = new Ajv({
    strict: true,
    strictTypes: false,
    strictRequired: false,
    allErrors: true,
    formats: {
      regex: (value: string) => {
        try {
          new RegExp(value, "u");
          return true;
        } catch {
          return false;
        }
      },
      "date-time": (value: string) => RFC3339.test(value) && !Number.isNaN(Date.parse(value)),
    },
  });
  return ajv.compile(toDraft07(schema) as object);
}

let bundledValidator: ValidateFunction | undefined;

/**
 * Checks one CreatePipelineRequest against the schema. The bundled schema is
 * compiled once; pass a compiled validator to check against another copy.
 */
/** The validator of the schema shipped with kaos, compiled on first use. */
function bundled(): ValidateFunction {
  bundledValidator ??= compileSpecSchema();
  return bundledValidator;
}

export function validatePipelineSpec(spec: unknown, validator?: ValidateFunction): SpecValidation {
  const validate = validator ?? bundled();
  const valid = validate(spec) === true;
  return { valid, errors: valid ? [] : describeSpecErrors(validate.errors ?? [], spec as JsonValue) };
}

function describeSpecErrors(errors: readonly ErrorObject[], spec: JsonValue): string[] {
  const lines = new Set<string>();
  for (const error of errors) {
    // `oneOf` failures repeat what the branches already said.
    if (error.keyword === "oneOf") continue;
    const where = error.instancePath === "" ? "(top level)" : error.instancePath;
    if (error.keyword === "additionalProperties") {
      const extra = (error.params as { additionalProperty?: string }).additionalProperty;
      lines.add(`${where}: unknown key '${extra}'`);
    } else if (error.keyword === "enum") {
      const allowed = (error.params as { allowedValues?: unknown[] }).allowedValues ?? [];
      lines.add(
        `${where}: ${JSON.stringify(pointerValue(spec, error.instancePath))} is not one of ${allowed.map((v) => JSON.stringify(v)).join(", ")}`,
      );
    } else {
      lines.add(`${where}: ${error.message ?? error.keyword}`);
    }
  }
  return [...lines];
}

function pointerValue(root: JsonValue, pointer: string): JsonValue | undefined {
  let node: JsonValue | undefined = root;
  for (const raw of pointer.split("/").slice(1)) {
    const key = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    if (node === null || typeof node !== "object") return undefined;
    node = Array.isArray(node) ? node[Number(key)] : node[key];
  }
  return node;
}
