// Files imported with `with { type: "file" }` (embedded by `bun build --compile`) are their paths.
declare module "*.safetensors" {
  const path: string;
  export default path;
}

declare module "*.so" {
  const path: string;
  export default path;
}
