"""GPU indices caught while a job runs (carbond.gpu_capture), from what slurmctld prints."""

from carbond.gpu_capture import GpuCapture, parse_indices, parse_running_gpu_jobs

# `scontrol -d -o show job 3` on the 22.05 testbed (a task of array 2 on n3's GPU 1), shortened
SHOW = ("JobId=3 ArrayJobId=2 ArrayTaskId=1 JobName=wrap JobState=RUNNING NodeList=n3 "
        "TRES=cpu=1,node=1,billing=1,gres/gpu=1 JOB_GRES=gpu:1 Nodes=n3 CPU_IDs=1 Mem=0 GRES=gpu:1(IDX:1) "
        "MinCPUsNode=1")
TWO_NODES = ("JobId=12 JobState=RUNNING NodeList=g[1-3] Nodes=g[1-2] CPU_IDs=0-3 Mem=0 "
             "GRES=gpu:a100:2(IDX:0-1) Nodes=g3 CPU_IDs=0 Mem=0 GRES=gpu:a100:1(IDX:3),gpu:t4:1(IDX:5) Features=x")


def test_indices_per_node_from_scontrol():
    assert parse_indices(SHOW) == ("3", {"n3": "1"})
    assert parse_indices(TWO_NODES) == ("12", {"g1": "0-1", "g2": "0-1", "g3": "3,5"})
    # a node where the job holds no GPU is recorded as none (not left to a guess by count)
    assert parse_indices("JobId=13 Nodes=g1 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:2) Nodes=c1 CPU_IDs=0 Mem=0 GRES= x=y") \
        == ("13", {"g1": "2", "c1": ""})
    # a finished job shows GRES= without IDX: nothing to record
    assert parse_indices("JobId=4 JobState=COMPLETED Nodes=n3 CPU_IDs=0 Mem=0 GRES= Features=x") == ("4", {})


def test_running_gpu_jobs_from_squeue():
    text = ("1             cpu=1,node=1,billing=1,gres/gpu=1    \n"
            "5             cpu=2,node=1,billing=2               \n"
            "3             cpu=1,node=1,billing=1,gres/gpu=1    \n")
    assert parse_running_gpu_jobs(text) == {"1", "3"}


class Slurm:
    def __init__(self, running, shows):
        self.running, self.shows, self.asked = running, shows, []

    def running_gpu_jobs(self):
        return set(self.running)

    def job_details(self, job_id):
        self.asked.append(job_id)
        return self.shows[job_id]


class Ledger:
    def __init__(self):
        self.rows = {}

    def gpu_jobs_captured(self, ids):
        return set(ids) & set(self.rows)

    def record_gpu_indices(self, job_id, per_node):
        self.rows[job_id] = per_node


def test_each_running_gpu_job_is_asked_once_and_recorded():
    slurm, ledger = Slurm({"3"}, {"3": SHOW}), Ledger()
    cap = GpuCapture(slurm, ledger, lambda: 0.0)
    assert cap.poll() == 1 and ledger.rows == {"3": {"n3": "1"}}
    assert cap.poll() == 0 and slurm.asked == ["3"]  # seen: not asked again while it runs
    slurm.running = set()
    cap.poll()
    assert cap._seen == set()  # ended jobs are forgotten
