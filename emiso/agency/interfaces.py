"""Interfaces between the engine and the agency that runs its MEs.

The engine depends only on L{IAgency}; L{emiso.agency.controller.MEController}
implements it by talking to a driver process, and tests may use fakes.
"""

from zope.interface import Attribute, Interface


class IAgency(Interface):
    """
    An agency that injects, runs, suspends and terminates MEs in slots 2 to 6.

    Every operation returns a L{Deferred} that fires with the driver's result
    dict or fails with an L{emiso.errors.AgencyError} subclass.
    """

    degraded = Attribute(
        "True after an abandoned (timed-out) operation until the next "
        "successful list of the slots; the state of the stuck slot is unknown."
    )

    driver_pid = Attribute(
        "Process id of the current driver process, or None while none runs."
    )

    def start():
        """
        Start the driver process and send it C{hello}.

        @return: a Deferred that fires with the C{hello} result dict.
        """

    def stop():
        """
        Ask the driver to shut down and stop restarting it.

        @return: a Deferred that fires with None once the driver has exited
            or was killed.
        """

    def call(op, **args):
        """
        Queue one driver operation and send it when the previous one is done.

        @param op: the operation name, for example C{"inject"}.
        @param args: the operation's arguments, sent as the C{args} object.
        @return: a Deferred that fires with the result dict.
        """

    def subscribe(callback):
        """
        Register C{callback} to receive each unsolicited driver event dict.
        """

    def list_slots():
        """
        List slots 2 to 6.

        @return: a Deferred that fires with C{{"slots": [slot dict, ...]}},
            one entry per slot.
        """

    def inject(image, log, token):
        """
        Load the ME from the FIT image C{image} into the first free slot.

        @param image: absolute path of the .itb file.
        @param log: absolute path of the console log file the ME appends to.
        @param token: opaque string stored with the slot (the container id).
        @return: a Deferred that fires with C{{"slot": N, "state": ..., "size": ...}}.
        """

    def finalize(slot):
        """
        Bring the ME in C{slot} to the living state (boot, resume or restore).
        """

    def initialize(slot):
        """
        Suspend the living ME in C{slot}.
        """

    def terminate(slot):
        """
        Force-terminate the ME in C{slot} and free the slot.
        """

    def read_snapshot(slot, path):
        """
        Write the snapshot of the suspended ME in C{slot} to the zip file C{path}.
        """

    def write_snapshot(path, log, token, image=None):
        """
        Restore the snapshot zip file C{path} into a free slot (state migrating).

        @param image: absolute path of the local image file of the
            snapshot's ME, or C{None} to use the one the snapshot records.
            The simulated agency needs it to restore a snapshot taken on
            another smart object.
        """
