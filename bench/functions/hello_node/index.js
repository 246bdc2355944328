// The Node hello handler of the benchmarks. Naming the process lets the memory figure find
// this worker under the invoker, however it was started.
try {
  process.title = "lamina-mem-node";
} catch (e) {
  // not allowed in the sandbox: the benchmark falls back to the new process
}

exports.handler = async (event, context) => ({ message: "Hello, world!" });
