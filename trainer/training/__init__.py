"""Training, the only part that knows about distribution (through the ``Accelerator``): the set-up
and ``fit`` (``train``), what they share (``run``), the loop's pieces (``loop``, ``validation``,
``guard``), the tasks (``task``), the run folder (``rundir``), checkpoints, preemption, the process
group (``processes``, ``collective``), the optimizer and schedule (``optim``), the loss, trackers
(``tracking``) and starting from a pre-trained encoder (``pretrained``)."""
