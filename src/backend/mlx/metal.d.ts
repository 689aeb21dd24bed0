// Metal kernel sources are imported as text and embedded in the compiled binary.
declare module "*.metal" {
  const source: string;
  export default source;
}
