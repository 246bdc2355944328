"""The hello handler whose idle worker the memory figure reads: it names its process (comm)
so the benchmark can find it under the invoker, however the worker was started."""


def _name_process() -> None:
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("lamina-mem-py")
    except OSError:  # no /proc in the sandbox: the benchmark falls back to the new process
        pass


_name_process()


def handler(event, context):
    return {"message": "Hello, world!"}
