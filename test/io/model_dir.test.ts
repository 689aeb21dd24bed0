import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { openModelDir } from "../../src/io/model_dir.ts";
// config parsing learns the model families from the registry
import "../../src/models/registry.ts";
import { llamaConfig, llamaTensors, tempDir, writeModelDir } from "./helpers.ts";

describe("openModelDir", () => {
  test("config, weights, tokenizer files, template from tokenizer_config.json, eos merged from generation_config", () => {
    const dir = writeModelDir(tempDir(), llamaConfig({ eos_token_id: 2 }), llamaTensors(), {
      extra: {
        "tokenizer.json": "{}",
        "tokenizer_config.json": JSON.stringify({ chat_template: "{{ messages }}", eos_token: "</s>" }),
        "generation_config.json": JSON.stringify({ eos_token_id: [2, 9], temperature: 0.6 }),
      },
    });
    const md = openModelDir(dir);
    expect(md.dir).toBe(dir);
    expect(md.config.modelType).toBe("llama");
    expect(md.quant).toBeNull();
    expect(md.weights.has("lm_head.weight")).toBe(true);
    expect(md.tokenizerJson).toBe(join(dir, "tokenizer.json"));
    expect(md.tokenizerConfig?.eos_token).toBe("</s>");
    expect(md.chatTemplate).toBe("{{ messages }}");
    expect(md.generationConfig?.temperature).toBe(0.6);
    expect(md.config.eosTokenIds).toEqual([2, 9]);
  });

  test("chat_template.jinja wins over the tokenizer config; named template lists pick 'default'", () => {
    const a = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), {
      extra: {
        "chat_template.jinja": "jinja file",
        "tokenizer_config.json": JSON.stringify({ chat_template: "old" }),
      },
    });
    expect(openModelDir(a).chatTemplate).toBe("jinja file");
    const b = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), {
      extra: {
        "tokenizer_config.json": JSON.stringify({
          chat_template: [
            { name: "tool_use", template: "tools" },
            { name: "default", template: "chat" },
          ],
        }),
      },
    });
    expect(openModelDir(b).chatTemplate).toBe("chat");
    const c = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), {
      extra: { "chat_template.json": JSON.stringify({ chat_template: "from json" }) },
    });
    expect(openModelDir(c).chatTemplate).toBe("from json");
  });

  test("no tokenizer files at all", () => {
    const md = openModelDir(writeModelDir(tempDir(), llamaConfig(), llamaTensors()));
    expect(md.tokenizerJson).toBeUndefined();
    expect(md.chatTemplate).toBeUndefined();
    expect(md.generationConfig).toBeUndefined();
  });

  test("quantization config is read from the top level", () => {
    const dir = writeModelDir(
      tempDir(),
      llamaConfig({ quantization: { group_size: 64, bits: 4 } }),
      llamaTensors({ quant: () => ({ bits: 4, group: 64 }) }),
    );
    expect(openModelDir(dir).quant?.global).toEqual({ mode: "affine", bits: 4, groupSize: 64 });
  });

  test("problems name the file", () => {
    const dir = tempDir();
    expect(() => openModelDir(join(dir, "missing"))).toThrow(`${join(dir, "missing")}: no such directory`);
    expect(() => openModelDir(dir)).toThrow(`${join(dir, "config.json")}: file not found`);
    const bad = writeModelDir(tempDir(), llamaConfig({ quantization: { bits: 9, group_size: 64 } }), llamaTensors());
    expect(() => openModelDir(bad)).toThrow(`${join(bad, "config.json")}: quantization: affine does not support bits=9`);
    const badTok = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { extra: { "tokenizer_config.json": "[" } });
    expect(() => openModelDir(badTok)).toThrow(`${join(badTok, "tokenizer_config.json")}: invalid JSON`);
  });
});
