// A weights file imported with `with { type: "file" }` is its path.
declare module "*.safetensors" {
  const path: string;
  export default path;
}
