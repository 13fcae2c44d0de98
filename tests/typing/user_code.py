import taskmill as tm

media = tm.Domain("media")


@media.task
def thumb(ctx: tm.TaskContext, path: str, size: int = 64) -> str:
    return f"{path}@{size}"


@media.task(cpus=2, name="big")
def resize(ctx: tm.TaskContext, path: str) -> None:
    ctx.spawn_child(thumb, path=path, size=8)
    ctx.spawn_child(thumb, path=path, sise=8)  # E


def use(sched: tm.Scheduler, ctx: tm.TaskContext) -> None:
    h = sched.domain(media)
    h.submit(thumb, path="a", size=1)
    h.submit(thumb, path="a")
    h.submit(thumb.options(priority=1), path="a", size=2)
    h.submit(thumb.call(path="a", size=3))
    h.submit(resize, path="x")
    h.submit_batch([thumb.call(path=p) for p in ("a", "b")])
    h.submit(thumb, path="a", sise=1)  # E
    h.submit(thumb, path=1, size=1)  # E
    thumb.call(size=3)  # E
    h.submit(resize.options(cpus=1), path=3)  # E
    text: str = thumb(ctx, path="a")
    number: int = thumb(ctx, path="a")  # E
    print(text, number)
