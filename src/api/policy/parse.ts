/**
 * A Policy document as text (YAML or JSON) to a validated Policy: what the coordinator does
 * at `policy apply` and the agent with the documents the coordinator sends it.
 */
import { parseAllDocuments } from "yaml";
import { CloudlessError } from "../errors.js";
import { decodePolicy, MAX_POLICY_DOCUMENT_BYTES, type Policy } from "./policy.js";

/** YAML aliases a policy document may use (a billion-laughs document is refused early). */
const maxYamlAliases = 50;

/** Reads one Policy document (YAML or JSON); every problem is one line naming the field. */
export function parsePolicyDocument(text: string): Policy {
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_POLICY_DOCUMENT_BYTES) {
    throw CloudlessError.invalid(
      `the policy document is ${bytes} bytes; at most ${MAX_POLICY_DOCUMENT_BYTES} (MAX_POLICY_DOCUMENT_BYTES)`,
    );
  }
  const documents = parseAllDocuments(text);
  const list = Array.isArray(documents) ? documents : [];
  const values: unknown[] = [];
  for (const document of list) {
    if (document.errors.length > 0) {
      const first = document.errors[0];
      const at = first?.linePos?.[0];
      const reason = (first?.message.split("\n")[0] ?? "").replace(
        / at line \d+, column \d+:?$/,
        "",
      );
      throw CloudlessError.invalid(
        `the policy document is not valid YAML${at ? ` at line ${at.line}, column ${at.col}` : ""}: ${reason}`,
      );
    }
    let value: unknown;
    try {
      value = document.toJS({ maxAliasCount: maxYamlAliases });
    } catch (error) {
      throw CloudlessError.invalid(
        `the policy document cannot be read: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    if (value !== null && value !== undefined) values.push(value);
  }
  if (values.length !== 1) {
    throw CloudlessError.invalid(
      `expected one Policy document, found ${values.length}; apply one policy per file`,
    );
  }
  const decoded = decodePolicy(values[0]);
  if (!decoded.ok) {
    throw CloudlessError.invalid(`the policy is invalid:\n  ${decoded.errors.join("\n  ")}`);
  }
  return decoded.policy;
}
