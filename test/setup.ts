// Preloaded by bun test (bunfig.toml): hooks for the whole run rather than for one file.
import { afterAll } from "bun:test";
import { removeTempDirs } from "./io/helpers.ts";

// A hook of the preload runs once, after every file; one registered inside a test or a beforeAll would run as
// soon as that test or hook ends, while its directory may still be in use.
afterAll(removeTempDirs);
