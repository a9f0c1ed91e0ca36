"""Persistence for CheXNet Studio (SQLAlchemy 2 + alembic; SQLite by default, PostgreSQL via DATABASE_URL).

Modules:
- engine      get_engine(url=None), session_scope(engine=None, read_only=False), default_url()
- models      the schema (typed declarative models; base, study_models and trust_models hold parts of it);
              findings_of / set_findings for the 14 finding columns
- migrate     upgrade(engine) (run automatically by get_engine), head_revision(), make_revision()
- accounts    create_user, authenticate, ensure_initial_admin, set_password / set_role / set_active
- importer    import_chestxray14(session_or_engine, root), store_upload(session, data, filename, user)
- label_rules the label types and rules every other review module builds on: validate_label, consensus,
              EffectiveLabel, QueueItem, REASON_CODES
- reviews     save_review, adjudicate (one transaction each, refreshing what depends on the label),
              label_history; review_queue / review_lookup (the queues)
- effective   derived labels and disagreement: get_effective_label / effective_labels
- adjudication, assignments, study, reader_stats, cam_feedback   the reading study (issue 11)
- audit       the label events' hash chain (`python -m db verify-audit`)
- sessions, login_throttle   server-side login sessions and throttling
- changes     cheap change tokens that pages cache expensive aggregates on
- export      export_labels_dataframe(session, "data-entry" | "trainer"), write_labels_csv
- quality     label_quality(session): NLP overturns, inter-reader kappa, agreement with Google's labels
- registry    register_model_version, promote, rollback (who and why in registry_events),
              get_active_version, save_predictions (scored for the review queue)
- operating_points   admin-set thresholds per finding, versioned with who and why
- jobs        enqueue_job, claim_next_job, heartbeat, update_progress, request_cancel, finish_job,
              mark_stale_jobs_interrupted
- errors      the user-facing exceptions (str() is one sentence): StaleReviewError, InvalidLabelError, ...

Functions that take a Session never commit: the caller's `session_scope()` block does, so a change and
its audit event are one transaction. Command line: `python -m db --help`.
"""
