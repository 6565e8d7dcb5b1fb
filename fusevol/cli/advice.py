"""What a user of the command line can do about an error: the commands and
flags the layers below must not name (errors.py), added to its message."""

from .. import errors


def worded(error: errors.FusevolError) -> str:
    text, details = str(error), error.details
    if error.reason == "in_use":
        holder, action = details["holder"], details["action"]
        if holder == "containers":
            if action == "rollback":
                return f"{text}; stop them before rolling back"
            return f"{text}; stop the containers using it first"
        if action == "rollback" and details.get("force_helps"):
            return f"{text}; unmount it, or use --force to unmount, roll back and mount it again"
        if action == "receive":
            return f"{text}; unmount it before receiving into it"
        if action == "pull":
            return f"{text}; unmount it before pulling into it"
        return f"{text}; unmount it first"
    if error.reason == "has_snapshots":
        volume = details["volume"]
        return f"{text} (fusevol snapshot ls {volume}; fusevol snapshot rm {volume}@NAME)"
    if error.reason == "changed_since_snapshot":
        return f"{text} (snapshot it first, or use --force)"
    if error.reason == "remote_exists":
        return f"{text} (fusevol remote rm {details['remote']} first)"
    if error.reason in ("no_remote", "remote_name"):
        return f"{text} (fusevol remote ls lists them)"
    if error.reason == "no_base":
        return f"{text}: send -i from a snapshot it has"
    if error.reason == "damaged":
        return f"{text}; fusevol verify names the files it reaches"
    if error.reason == "diverged":
        return (f"{text}; keep one by hand (fusevol push {details['volume']}@SNAPSHOT "
                f"{details['remote']}, or fusevol pull {details['remote']} "
                f"{details['volume']}@{details['snapshot']} NEWVOLUME)")
    if error.reason == "push_running":
        return f"{text}; prune when it is done, or with --break-locks if that push is known to be dead"
    if error.reason == "no_remote_snapshot":
        return f"{text} (fusevol remote snapshots {details['remote']} lists them)"
    if error.reason == "no_snapshot_to_pull_onto":
        return f"{text}: pull into a new volume (give NEWVOLUME), or snapshot it first"
    if error.reason == "pull_raced_gc":
        return f"{text}; pull again"
    if error.reason == "remote_damaged":
        return f"{text} (fusevol remote verify {details['remote']} names what is wrong)"
    return text
