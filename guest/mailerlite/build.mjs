// Builds the connector into a WASI 0.2 component: `node build.mjs OUT.wasm`.
//
// The component targets the `connector` world of the contract (wit/ at the workspace root, the
// same files the Rust SDK ships). Every optional WASI feature of the JavaScript engine is left
// out, so the component imports only what the world names (wasi:http and wasi:io) and the host
// grants it nothing else.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUT.wasm');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath: here('./src/connector.js'),
  witPath: here('../../wit'),
  worldName: 'connector',
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`wrote ${out} (${component.length} bytes)`);
