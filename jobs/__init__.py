"""Background jobs of CheXNet Studio, between the web app and the database (webapp -> jobs -> db -> core).

Modules:
- params        the typed job contract: FineTuneParams (settings: core.training.TrainSettings),
                EvaluateParams, PredictParams; job kinds; JobParamsError
- queue         what the pages call: enqueue_fine_tune / enqueue_evaluate / enqueue_predict,
                ensure_evaluated, resume_job / can_resume, suggest_version_name, name_in_use
- listing       JobSummary: jobs as plain values for the pages (current_and_recent)
- progress      JobProgress: what a running job reports, typed; the page renders it
- run           JobRun: one running job (heartbeats, throttled progress, cancellation); WorkerSettings
- worker        Worker: claim, dispatch to HANDLERS, endings; `python -m jobs` runs it
- fine_tune, evaluate, predict   one module per job kind
- torchrun, train_runner         a fine-tune over several GPUs (`torchrun -m jobs.train_runner`)
- dicomweb      a PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS); every failure one sentence (PacsError)
- pacs_import   the pacs_import job kind: search, de-identified import (resumable)
- pacs_write_back the pacs_write_back job kind: findings SR + CAM Secondary Capture into the source study
- pacs_label_write_back  the readers' labels as an SR into the source study (once per label)
- pacs_screen   the pacs_screen job kind: poll a connection for new studies, predict + write back each once
                per model version; the worker queues it when due
- pacs_lookup   the Predict page's look at one PACS image (found by accession / Study UID, de-identified)
- imported_evaluation  the evaluate job's report on PACS imports that readers labelled ("pacs")
- labels        the labels table a fine-tune trains on and its snapshot
- folders       the imported dataset's folder, each run's folder
- worker_status which workers are alive, on which device (files under CHEXNET_HOME/workers)
"""
