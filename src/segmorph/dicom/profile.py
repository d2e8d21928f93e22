"""The DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (Table E.1-1) as data.

:data:`PROFILE` maps each tag of the table to its action code as the standard writes it (``X``, ``X/Z/D``...);
:data:`ACTIONS` maps it to the action :mod:`segmorph.dicom.anonymize` applies (``X``, ``Z``, ``D`` or ``U``,
see :data:`RESOLVED_ACTION`).
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag

# PS3.15 Table E.1-1, Basic Profile column, by action code. Curves and overlays (repeating groups) are
# handled by segmorph.dicom.anonymize; the file meta MediaStorageSOPInstanceUID is rebuilt from SOPInstanceUID.
_PROFILE_BY_CODE = {
    "X": """
        AcquisitionComments AcquisitionContextSequence AcquisitionProtocolDescription ActualHumanPerformersSequence
        AdditionalPatientHistory AddressTrial AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence
        AdmittingDiagnosesDescription AdmittingTime Allergies AnnotationGroupDescription ApprovalStatusDateTime
        Arbitrary AssertionExpirationDateTime AuthorObserverSequence BarcodeValue BeamDescription BranchOfService
        CalibrationDateTime CassetteID CertifiedTimestamp CommentsOnThePerformedProcedureStep CompensatorDescription
        ConceptualVolumeCombinationDescription ConceptualVolumeDescription
        ConfidentialityConstraintOnPatientDataDescription ConsultingPhysicianIdentificationSequence
        ContainerComponentID ContainerDescription ContentCreatorIdentificationCodeSequence ContentSequence
        ContributionDescription CountryOfResidence CreationDate CreationTime CurrentObserverTrial
        CurrentPatientLocation CurveDate CurveTime CustodialOrganizationSequence DataSetTrailingPadding
        DateOfDocumentOrVerbalTransactionTrial DateOfLastCalibration DateOfSecondaryCapture
        DateTimeOfLastCalibration DerivationDescription DeviceDescription DeviceSettingDescription
        DigitalSignatureUID DigitalSignaturesSequence DischargeDate DischargeDiagnosisDescription DischargeTime
        DistributionAddress DistributionName DoseReferenceDescription EntityDescription EntityName
        EquipmentFrameOfReferenceDescription EthnicGroup ExpectedCompletionDateTime FractionGroupDescription
        FrameComments GantryID GeneratorID GroupOfPatientsIdentificationSequence BreedRegistrationNumber
        BreedRegistrationSequence HumanPerformerName HumanPerformerOrganization IconImageSequence
        IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
        InstanceCoercionDateTime InstanceOriginStatus InstitutionAddress InstitutionalDepartmentName
        InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification IntendedFractionStartTime
        IntendedPhaseEndDate IntendedPhaseStartDate IntendedRecipientsOfResultsIdentificationSequence
        InterpretationApprovalDate InterpretationApprovalTime InterpretationApproverSequence InterpretationAuthor
        InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer InterpretationRecordedDate
        InterpretationRecordedTime InterpretationRecorder InterpretationText InterpretationTranscriber
        InterpretationTranscriptionDate InterpretationTranscriptionTime InterventionDrugStartTime
        InterventionDrugStopTime IssuerOfAccessionNumberSequence IssuerOfAdmissionID IssuerOfAdmissionIDSequence
        IssuerOfPatientID IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence LabelText LastMenstrualDate MAC
        MACParametersSequence MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
        ModifiedImageDescription ModifyingDeviceID ModifyingDeviceManufacturer NameOfPhysiciansReadingStudy
        NamesOfIntendedRecipientsOfResults Occupation OrderCallbackPhoneNumber OrderCallbackTelecomInformation
        OrderEnteredBy OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence
        OtherPatientNames OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge
        PatientAlternativeCalendar PatientBirthDateInAlternativeCalendar PatientBirthName PatientBirthTime
        PatientComments PatientDeathDateInAlternativeCalendar PatientInstitutionResidence
        PatientInsurancePlanCodeSequence PatientMotherBirthName PatientPrimaryLanguageCodeSequence
        PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference PatientSize PatientState
        PatientTelecomInformation PatientTelephoneNumbers PatientTransportArrangements PatientWeight
        PerformedLocation PerformedProcedureStepDescription PerformedProcedureStepEndDate
        PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
        PerformedProcedureStepStartTime PerformedStationAETitle PerformedStationGeographicLocationCodeSequence
        PerformedStationName PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
        PerformingPhysicianName PersonAddress PersonTelecomInformation PersonTelephoneNumbers
        PhysicianApprovingInterpretation PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
        PhysiciansReadingStudyIdentificationSequence PlateID PreMedication PregnancyStatus PrescriptionDescription
        PrivateDataElementCharacteristicsSequence ProcedureStepCancellationDateTime ReasonForOmissionDescription
        ReasonForTheRequestedProcedure ReasonForTheImagingServiceRequest ReasonForStudy ReasonForVisit
        ReasonForVisitCodeSequence
        ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence ReferencedPatientPhotoSequence
        ReferencedPatientSequence ReferencedSOPInstanceMACSequence ReferringPhysicianAddress
        ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers RegionOfResidence
        RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments RequestedProcedureID
        RequestedProcedureLocation RequestingPhysician RequestingService ResponsibleOrganization ResponsiblePerson
        ResultsComments ResultsDistributionListSequence ResultsID ResultsIDIssuer ROIDescription
        ROIGenerationDescription ROIObservationDescription RouteOfAdmissions RTPlanDescription RTPlanName
        ScheduledAdmissionDate ScheduledAdmissionTime ScheduledDischargeDate ScheduledDischargeTime
        ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
        ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
        ScheduledProcedureStepDescription ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
        ScheduledProcedureStepID ScheduledProcedureStepLocation ScheduledProcedureStepModificationDateTime
        ScheduledProcedureStepStartDate ScheduledProcedureStepStartDateTime ScheduledProcedureStepStartTime
        ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
        ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
        ScheduledStudyStartDate ScheduledStudyStartTime ScheduledStudyStopDate ScheduledStudyStopTime
        SeriesDescription ServiceEpisodeDescription ServiceEpisodeID SetupTechniqueDescription SmokingStatus
        SourcePatientGroupIdentificationSequence SourceSerialNumber SpecialNeeds SpecimenAccessionNumber
        SpecimenDetailedDescription SpecimenShortDescription StructureSetDescription StructureSetName StudyComments
        StudyDescription StudyIDIssuer TelephoneNumberTrial TextComments TextString
        TimeOfDocumentCreationOrVerbalTransactionTrial TimeOfLastCalibration TimeOfSecondaryCapture
        TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle UDISequence UniqueDeviceIdentifier
        VerbalSourceIdentifierCodeSequenceTrial VerbalSourceTrial VerifyingOrganization VisitComments
        XRayDetectorLabel GPSVersionID GPSLatitudeRef GPSLatitude GPSLongitudeRef GPSLongitude GPSAltitudeRef
        GPSAltitude GPSTimeStamp GPSSatellites GPSStatus GPSMeasureMode GPSDOP GPSSpeedRef GPSSpeed GPSTrackRef
        GPSTrack GPSImgDirectionRef GPSImgDirection GPSMapDatum GPSDestLatitudeRef GPSDestLatitude
        GPSDestLongitudeRef GPSDestLongitude GPSDestBearingRef GPSDestBearing GPSDestDistanceRef GPSDestDistance
        GPSProcessingMethod GPSAreaInformation GPSDateStamp GPSDifferential
    """,
    "Z": """
        AccessionNumber ConsultingPhysicianName ContentCreatorName FillerOrderNumberImagingServiceRequest
        IssuerOfTheContainerIdentifierSequence IssuerOfTheSpecimenIdentifierSequence PatientBirthDate PatientID
        PatientName PatientSex PlacerOrderNumberImagingServiceRequest ReferringPhysicianName ROIInterpreter
        SpecimenPreparationSequence StudyDate StudyID StudyTime VerifyingObserverIdentificationCodeSequence
    """,
    "D": """
        AcquisitionFieldOfViewLabel AnnotationGroupLabel AssertionDateTime ContainerIdentifier ContrastBolusAgent
        Date DateTime EntityLabel EntityLongLabel GraphicAnnotationSequence InterlockDateTime InterlockDescription
        InterlockOriginDescription PersonIdentificationCodeSequence PersonName RTPlanLabel SpecimenIdentifier
        StructureSetLabel Time VerifyingObserverName VerifyingObserverSequence
    """,
    "U": """
        AcquisitionUID AnnotationGroupUID ConcatenationUID ConceptualVolumeUID ConstituentConceptualVolumeUID
        ContextGroupExtensionCreatorUID CreatorVersionUID DeviceUID DimensionOrganizationUID DoseReferenceUID
        DosimetricObjectiveUID FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID InstanceCreatorUID
        IrradiationEventUID LargePaletteColorLookupTableUID ManufacturerDeviceClassUID MediaStorageSOPInstanceUID
        ObservationSubjectUIDTrial ObservationUID PaletteColorLookupTableUID PresentationDisplayCollectionUID
        PresentationSequenceCollectionUID PyramidUID ReferencedConceptualVolumeUID ReferencedDoseReferenceUID
        ReferencedDosimetricObjectiveUID ReferencedFiducialsUID ReferencedFrameOfReferenceUID
        ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedObservationUIDTrial
        ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile RelatedFrameOfReferenceUID RTTreatmentPhaseUID
        SeriesInstanceUID SOPInstanceUID SourceConceptualVolumeUID SourceFrameOfReferenceUID SpecimenUID
        StorageMediaFileSetUID StudyInstanceUID SynchronizationFrameOfReferenceUID TargetUID
        TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TrackingUID TransactionUID UID
    """,
    "X/Z": """
        AcquisitionDate AcquisitionTime PatientSexNeutered ReferencedStudySequence RequestedProcedureDescription
        ReviewerName
    """,
    "X/D": """
        AcquisitionDateTime AcquisitionDeviceProcessingDescription AttributeModificationDateTime ContentDate
        ContentTime ContributionDateTime DateOfLastDetectorCalibration DecayCorrectionDateTime DetectorID
        EndAcquisitionDateTime FirstTreatmentDate FrameAcquisitionDateTime FrameReferenceDateTime
        InstanceCreationDate MostRecentTreatmentDate ObservationDateTime OperatorIdentificationSequence ProtocolName
        RadiopharmaceuticalStartDateTime RadiopharmaceuticalStartTime RadiopharmaceuticalStopDateTime
        RadiopharmaceuticalStopTime ReviewDate ReviewTime RTPlanDate RTPlanTime SeriesDate SeriesTime
        StartAcquisitionDateTime StructureSetDate StructureSetTime TimeOfLastDetectorCalibration TreatmentDate
        TreatmentTime XRayDetectorID XRaySourceID
    """,
    "X/Z/D": """
        DeviceSerialNumber InstanceCreationTime InstitutionCodeSequence InstitutionName OperatorsName
        ReferencedPerformedProcedureStepSequence StationName
    """,
    "X/Z/U*": "ReferencedImageSequence SourceImageSequence",
}

# The mildest action that keeps a file valid whatever the attribute's Type in its IOD (see the docstring of
# segmorph.dicom.anonymize).
RESOLVED_ACTION = {
    "X": "X", "Z": "Z", "D": "D", "U": "U", "X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U",
}  # fmt: skip


def _build_profile() -> dict[BaseTag, str]:
    profile: dict[BaseTag, str] = {}
    for code, keywords in _PROFILE_BY_CODE.items():
        for keyword in keywords.split():
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"unknown DICOM keyword {keyword!r} in the confidentiality profile")
            profile[BaseTag(tag)] = code
    return profile


PROFILE: dict[BaseTag, str] = _build_profile()
"""PS3.15 Table E.1-1 Basic Profile: tag -> action code as written in the standard (``X``, ``X/Z/D``...)."""
ACTIONS: dict[BaseTag, str] = {tag: RESOLVED_ACTION[code] for tag, code in PROFILE.items()}
"""The action applied to each profile tag: ``X``, ``Z``, ``D`` or ``U``."""
