// JSON Schema -> the small set of node kinds the constrained decoder enforces. Keywords that do not change
// which texts are valid JSON of the right shape (descriptions, titles, formats) are ignored; keywords that would
// need enforcement we do not do (patterns, numeric bounds) are ignored too, so a schema never fails to compile
// for them, and the output still parses and has the declared structure.
import { RmlxError } from "../errors.ts";

export type SchemaNode =
  | { k: "any" }
  | { k: "object"; props: Map<string, SchemaNode>; required: Set<string>; additional: SchemaNode | null }
  | { k: "array"; items: SchemaNode; min: number; max: number }
  | { k: "string"; minLength: number; maxLength: number }
  | { k: "number"; integer: boolean }
  /** One of these exact JSON texts (const, enum, true/false/null), one char per UTF-8 byte (see byteString). */
  | { k: "literal"; options: string[] }
  | { k: "union"; options: SchemaNode[] };

const ANY: SchemaNode = { k: "any" };

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const utf8 = new TextEncoder();

/** Text as the byte-level recognizer compares it: one char per UTF-8 byte. */
export function byteString(text: string): string {
  let s = "";
  for (const b of utf8.encode(text)) s += String.fromCharCode(b);
  return s;
}

const jsonText = (v: unknown) => byteString(JSON.stringify(v as Json));

export function compileSchema(schema: unknown): SchemaNode {
  if (schema === undefined || schema === null) return ANY;
  if (typeof schema !== "object" || Array.isArray(schema)) {
    if (schema === true) return ANY;
    throw new RmlxError("invalid_argument", "json_schema: a schema must be an object");
  }
  const root = schema as Record<string, unknown>;
  const seen = new Map<object, SchemaNode>();

  const resolveRef = (ref: string): unknown => {
    if (!ref.startsWith("#")) throw new RmlxError("invalid_argument", `json_schema: only local $ref is supported, got '${ref}'`);
    let cur: unknown = root;
    for (const part of ref.slice(1).split("/").filter(Boolean)) {
      const key = decodeURIComponent(part.replace(/~1/g, "/").replace(/~0/g, "~"));
      if (cur === null || typeof cur !== "object" || !(key in (cur as object))) {
        throw new RmlxError("invalid_argument", `json_schema: $ref '${ref}' does not resolve`);
      }
      cur = (cur as Record<string, unknown>)[key];
    }
    return cur;
  };

  const build = (s: unknown, depth: number): SchemaNode => {
    if (depth > 64) throw new RmlxError("invalid_argument", "json_schema: nesting too deep (recursive $ref?)");
    if (s === true || s === undefined) return ANY;
    if (s === false) throw new RmlxError("invalid_argument", "json_schema: a 'false' schema admits no value");
    if (typeof s !== "object" || s === null || Array.isArray(s)) throw new RmlxError("invalid_argument", "json_schema: a schema must be an object");
    const o = s as Record<string, unknown>;
    const cached = seen.get(o);
    if (cached) return cached;
    if (typeof o.$ref === "string") return build(resolveRef(o.$ref), depth + 1);
    if ("const" in o) return { k: "literal", options: [jsonText(o.const)] };
    if (Array.isArray(o.enum)) {
      if (o.enum.length === 0) throw new RmlxError("invalid_argument", "json_schema: empty enum");
      return { k: "literal", options: o.enum.map(jsonText) };
    }
    const alts = (o.anyOf ?? o.oneOf) as unknown[] | undefined;
    if (Array.isArray(alts)) {
      const { anyOf: _a, oneOf: _o, ...rest } = o;
      // Sibling keywords apply to every alternative (a common "type + anyOf" shape).
      return { k: "union", options: alts.map((a) => build({ ...rest, ...(a as object) }, depth + 1)) };
    }
    if (Array.isArray(o.allOf)) {
      const { allOf, ...rest } = o;
      return build(Object.assign({}, rest, ...(allOf as object[])), depth + 1);
    }
    const type = o.type;
    if (Array.isArray(type)) return { k: "union", options: type.map((t) => build({ ...o, type: t }, depth + 1)) };
    switch (type) {
      case "object": {
        const node: SchemaNode = { k: "object", props: new Map(), required: new Set(), additional: null };
        seen.set(o, node);
        const props = (o.properties ?? {}) as Record<string, unknown>;
        for (const [key, sub] of Object.entries(props)) node.props.set(key, build(sub, depth + 1));
        for (const r of (o.required ?? []) as string[]) node.required.add(r);
        const ap = o.additionalProperties;
        // Free-form objects (no declared properties) accept any keys; declared ones accept only those unless
        // additionalProperties says otherwise, so that the model cannot wander off the schema.
        node.additional = ap === false ? null : ap === undefined ? (node.props.size === 0 ? ANY : null) : build(ap, depth + 1);
        for (const r of node.required) {
          if (!node.props.has(r) && node.additional === null) throw new RmlxError("invalid_argument", `json_schema: required property '${r}' is not allowed by the schema`);
        }
        return node;
      }
      case "array": {
        const min = typeof o.minItems === "number" ? o.minItems : 0;
        const max = typeof o.maxItems === "number" ? o.maxItems : Infinity;
        if (min > max) throw new RmlxError("invalid_argument", "json_schema: minItems > maxItems");
        return { k: "array", items: build(o.items, depth + 1), min, max };
      }
      case "string": {
        const minLength = typeof o.minLength === "number" ? o.minLength : 0;
        const maxLength = typeof o.maxLength === "number" ? o.maxLength : Infinity;
        return { k: "string", minLength, maxLength };
      }
      case "integer":
        return { k: "number", integer: true };
      case "number":
        return { k: "number", integer: false };
      case "boolean":
        return { k: "literal", options: ["true", "false"] };
      case "null":
        return { k: "literal", options: ["null"] };
      case undefined:
        if (o.properties || o.required || o.additionalProperties !== undefined) return build({ ...o, type: "object" }, depth + 1);
        if (o.items) return build({ ...o, type: "array" }, depth + 1);
        return ANY;
      default:
        throw new RmlxError("invalid_argument", `json_schema: unknown type '${String(type)}'`);
    }
  };
  return build(root, 0);
}
