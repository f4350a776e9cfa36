// Run a Python script under real MicroPython (the WebAssembly port from npm,
// @micropython/micropython-webassembly-pyscript) for tests/test_micropython.py.
//
//   node tests/mpy_runner.mjs [--heap BYTES] DIR SCRIPT.py
//
// Every file in DIR is copied into MicroPython's filesystem root (so `import model` finds
// /model.py and scripts can open('/inputs.bin', 'rb')), then SCRIPT.py runs. Its print() output
// goes to stdout. A Python exception prints its traceback to stderr and exits with status 1.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const args = process.argv.slice(2);
let heapsize = 1024 * 1024;
if (args[0] === "--heap") {
    heapsize = Number.parseInt(args[1], 10);
    args.splice(0, 2);
}
if (args.length !== 2) {
    process.stderr.write("usage: node mpy_runner.mjs [--heap BYTES] DIR SCRIPT.py\n");
    process.exit(2);
}
const [dir, script] = args;

const mp = await loadMicroPython({
    heapsize,
    stdout: (line) => process.stdout.write(line + "\n"),
    stderr: (line) => process.stderr.write(line + "\n"),
});
for (const name of fs.readdirSync(dir).sort()) {
    const file = path.join(dir, name);
    if (fs.statSync(file).isFile()) {
        mp.FS.writeFile("/" + name, fs.readFileSync(file));
    }
}
try {
    mp.runPython(fs.readFileSync(script, "utf8"));
} catch (error) {
    if (error.name !== "PythonError") {
        throw error;
    }
    process.stderr.write(error.message + "\n");
    process.exit(1);
}
