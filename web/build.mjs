// Builds the generated files of web/static/ from their sources, or checks
// (--check) that the committed ones are what a build makes now, so they
// cannot drift from protocol/proto:
//
//   static/tern.proto.json          pbjs -t json of protocol/proto/tern/v1/tern.proto
//                                   (the schema the browser's protobufjs loads)
//   static/vendor/protobuf.min.js   protobufjs' "light" runtime, as npm ships it
//
// Run from web/ after `npm ci`: `npm run build` or `npm run check`.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const proto = join(web, "..", "protocol", "proto", "tern", "v1", "tern.proto");
const pbjs = join(web, "node_modules", ".bin", "pbjs");
const check = process.argv.includes("--check");

if (!existsSync(pbjs)) {
  console.error("node_modules missing: run `npm ci` in web/ first");
  process.exit(2);
}

const outputs = [
  {
    path: join(web, "static", "tern.proto.json"),
    make: () =>
      execFileSync(pbjs, ["-t", "json", proto], { encoding: "utf8" }),
  },
  {
    path: join(web, "static", "vendor", "protobuf.min.js"),
    make: () =>
      readFileSync(
        join(web, "node_modules", "protobufjs", "dist", "light", "protobuf.min.js"),
        "utf8",
      ),
  },
];

let stale = 0;
for (const { path, make } of outputs) {
  const fresh = make();
  if (check) {
    const committed = existsSync(path) ? readFileSync(path, "utf8") : null;
    if (committed !== fresh) {
      console.error(`stale: ${path} differs from a fresh build (run \`npm run build\` in web/)`);
      stale++;
    } else {
      console.log(`up to date: ${path}`);
    }
  } else {
    writeFileSync(path, fresh);
    console.log(`wrote ${path}`);
  }
}
process.exit(stale ? 1 : 0);
